"""Split names across format versions: datasets written now name the splits `train` / `validation` / `test`
(format version 2); a format version 1 dataset (`tests/data/fixtures/zoo_ds_format1`, written by sane_hf before the
rename, with a `val` split) still loads, its `val` split as `validation`, and either name finds the split of either
version (docs/zoo_dataset_format.md#format-versions)."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from sane_hf.data import ZOO_DATASET_FORMAT_VERSION, ZooDatasetVersionError, load_zoo_dataset


FORMAT_1 = Path(__file__).parent / "fixtures" / "zoo_ds_format1"


def _stored_tokens(parquet: Path) -> torch.Tensor:
    """The token rows of a shard, read with pyarrow alone."""
    column = pq.read_table(parquet).column("tokens").to_pylist()
    return torch.tensor(column, dtype=torch.float32)


def test_the_fixture_is_a_format_1_dataset_with_a_val_split():
    info = json.loads((FORMAT_1 / "meta/info.json").read_text())
    assert info["format_version"] == 1 and sorted(info["splits"]) == ["test", "train", "val"]
    assert ZOO_DATASET_FORMAT_VERSION == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_a_format_1_dataset_loads_its_val_split_as_validation(streaming):
    zoo = load_zoo_dataset(FORMAT_1, streaming=streaming)
    assert list(zoo.splits) == ["train", "validation", "test"]
    assert zoo.info.format_version == 1 and list(zoo.info.splits) == ["train", "validation", "test"]
    rows = zoo["validation"] if not streaming else list(zoo["validation"])
    tokens = rows[:]["tokens"] if not streaming else torch.stack([row["tokens"] for row in rows])
    assert torch.equal(tokens, _stored_tokens(FORMAT_1 / "data/val-00000-of-00001.parquet"))
    assert zoo["val"] is zoo["validation"]  # the old name finds it too


def test_either_name_finds_the_validation_split_of_a_new_dataset(converted):
    zoo = load_zoo_dataset(converted)
    assert zoo.info.format_version == 2 and list(zoo.splits) == ["train", "validation", "test"]
    assert (converted / "data/validation-00000-of-00001.parquet").is_file()
    assert zoo["val"] is zoo["validation"] is zoo.splits["validation"]
    with pytest.raises(KeyError, match=r"Unknown split 'dev'; a tokenized zoo has the splits \['train', 'validation'"):
        zoo["dev"]


def test_a_dataset_of_an_unknown_format_version_is_refused(tmp_path):
    folder = shutil.copytree(FORMAT_1, tmp_path / "zoo_ds")
    info = json.loads((folder / "meta/info.json").read_text())
    (folder / "meta/info.json").write_text(json.dumps({**info, "format_version": 3}))
    with pytest.raises(ZooDatasetVersionError, match="format_version 3, but this sane_hf reads format_version 1 or 2"):
        load_zoo_dataset(folder)
