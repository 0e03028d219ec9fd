"""Conversion sharded over workers (docs/architecture.md#work-over-processes): separate shard invocations plus a
finalize step, and two processes of a launch, write the dataset one process writes, file for file."""

import pytest
from safetensors.torch import load_file, save_file

from sane_hf.cli import main_convert_zoo
from sane_hf.data import load_zoo_dataset
from sane_hf.data.sharded_conversion import ShardingConfig, staging_dir


@pytest.fixture(scope="module")
def filtered_zoo(tmp_path_factory, zoo_tools):
    """A 7-model zoo (epochs 0..3, one unfinished model) in which model_0002's epoch 1 has a NaN weight: the filter
    drops it, which moves the start of every later shard by one row."""
    zoo = zoo_tools.write_sane_hf_zoo(
        tmp_path_factory.mktemp("sharded") / "zoo", num_models=7, num_epochs=3, unfinished=(6,)
    )
    file = zoo / "models/model_0002/checkpoints/epoch_0001.safetensors"
    state_dict = load_file(file)
    state_dict["module_list.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state_dict, file)
    return zoo


def _options(zoo, output_dir):
    # 0.003 MB of tokens per shard: 3 rows of 4 tokens x 64 values, so every split has several shards.
    return ["--zoo_dir", str(zoo), "--output_dir", str(output_dir), "--token_size", "64", "--shard_size_mb", "0.003"]


@pytest.fixture(scope="module")
def one_process_dataset(filtered_zoo, tmp_path_factory):
    """The dataset one process writes."""
    output = tmp_path_factory.mktemp("one") / "zoo_ds"
    main_convert_zoo(_options(filtered_zoo, output))
    return output


@pytest.fixture(scope="module")
def one_process(one_process_dataset, folder_digests):
    return folder_digests(one_process_dataset)


@pytest.fixture(scope="module")
def shards_in_order(one_process_dataset):
    """The dataset's shards in the order the workers count them: split by split, as meta/info.json lists them."""
    return [file for split in load_zoo_dataset(one_process_dataset).info.splits.values() for file in split.files]


def test_one_process_dataset_has_several_shards_per_split_and_drops_the_nan_checkpoint(one_process, filtered_zoo):
    shards = [name for name in one_process if name.endswith(".parquet")]
    assert len([name for name in shards if name.startswith("data/train-")]) >= 3
    assert len(shards) >= 5


def test_shard_invocations_and_finalize_write_the_dataset_of_one_process(
    filtered_zoo, tmp_path, one_process, shards_in_order, folder_digests
):
    """Three workers run separately, out of order; the finalize step refuses to run while one is missing, then
    writes the same files (every byte: shards, meta/info.json with the checksums, the card) as one process."""
    output = tmp_path / "zoo_ds"
    for index in (2, 0):
        main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "3", "--shard_index", str(index)])
    assert not output.exists() and staging_dir(output).is_dir()
    # Workers 2 and 0 wrote their shards (every third of the dataset's, counted over the splits) and no others.
    written = sorted(p.relative_to(staging_dir(output)).as_posix() for p in staging_dir(output).glob("data/*.parquet"))
    assert written == sorted(file for i, file in enumerate(shards_in_order) if i % 3 != 1)
    with pytest.raises(SystemExit):
        main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "3", "--finalize", "true"])
    main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "3", "--shard_index", "1"])
    main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "3", "--finalize", "true"])
    assert not staging_dir(output).exists()
    assert folder_digests(output) == one_process
    assert load_zoo_dataset(output).splits["train"].num_rows > 0  # and it loads (checksums verified)


def test_finalize_names_the_missing_worker(filtered_zoo, tmp_path, capsys):
    output = tmp_path / "zoo_ds"
    main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "2", "--shard_index", "1"])
    with pytest.raises(SystemExit):
        main_convert_zoo([*_options(filtered_zoo, output), "--num_shards", "2", "--finalize", "true"])
    error = capsys.readouterr().err
    assert "shard worker(s) [0] of 2 have not finished (no shard-00000-of-00002.json)" in error
    assert not output.exists()


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(num_shards=0), "`num_shards` must be a positive int, got 0."),
        (dict(shard_index=1), "`shard_index` needs `num_shards`"),
        (dict(num_shards=2, shard_index=2), "`shard_index` must be in 0 .. 1 (`num_shards`=2), got 2."),
        (dict(num_shards=2, shard_index=0, finalize=True), "`finalize` needs `num_shards`"),
    ],
)
def test_bad_sharding_options_fail_clearly(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ShardingConfig(**values)


def test_two_processes_of_a_launch_write_the_dataset_of_one_process(
    filtered_zoo, tmp_path, one_process, launch_two_processes, folder_digests
):
    """`scripts/convert_zoo.py` under torchrun: one shard worker per process, the main process finalizes."""
    launch_two_processes("scripts/convert_zoo.py", *_options(filtered_zoo, tmp_path / "zoo_ds"), cwd=tmp_path)
    assert folder_digests(tmp_path / "zoo_ds") == one_process
