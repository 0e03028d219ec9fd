"""Zoo -> Hub dataset: layout on disk, loading with and without sane_hf, splits, normalization, atomicity, push."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import datasets
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

from sane_hf import TokenLayout, TokenNormalization
from sane_hf.data import (
    ZOO_DATASET_TAG,
    ConvertConfig,
    ZooDatasetVersionError,
    ZooFormatError,
    convert_zoo,
    load_zoo_dataset,
    open_zoo,
    split_model_ids,
)
from sane_hf.zoo_models import build_zoo_model


def _convert(zoo, output, **kwargs):
    # Not canonicalized unless a test asks: most tests here compare the stored tokens with the raw checkpoints.
    kwargs.setdefault("canonicalize", False)
    config = ConvertConfig(zoo_dir=str(zoo), output_dir=str(output), token_size=kwargs.pop("token_size", 16), **kwargs)
    return convert_zoo(config, show_progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_is_laid_out_like_a_hub_dataset_repo(converted):
    files = sorted(_files(converted))
    assert files == [
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "meta/conversion.json",
        "meta/info.json",
        "meta/layout.json",
        "meta/normalization.json",
    ]
    info = json.loads((converted / "meta/info.json").read_text())
    assert info["format"] == "sane_hf-zoo-dataset" and info["format_version"] == 2
    assert info["architecture"] == "cnn_s" and info["token_size"] == 16 and info["tokens_normalized"] is True
    assert info["properties"]["test_acc"] == "float64" and info["properties"]["optimizer"] == "string"
    assert info["filtering"]["skipped_models"] == [{"model_id": "model_0008", "reason": "unfinished (no DONE file)"}]
    card = (converted / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-4.0"
    assert set(front["tags"]) >= {"sane", "weight-space-learning", "model-zoo"}
    assert front["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in ("train", "validation", "test")],
        }
    ]
    assert "load_zoo_dataset" in card and "digits" in card and "[More Information Needed]" not in card


def test_plain_datasets_reads_the_same_tokens_and_properties(converted, sane_zoo, tmp_path):
    """`datasets.load_dataset(folder)` in a process that never imports sane_hf."""
    script = textwrap.dedent(
        f"""
        import json, sys
        import datasets
        ds = datasets.load_dataset({str(converted)!r}).with_format("numpy")
        rows = {{}}
        for split in ds:
            for row in ds[split]:
                rows[f"{{row['model_id']}}/{{row['epoch']}}"] = {{
                    "split": split, "tokens": row["tokens"].tolist(), "test_acc": row["test_acc"].item(),
                    "optimizer": str(row["optimizer"]), "shape": list(row["tokens"].shape)}}
        assert "sane_hf" not in sys.modules
        json.dump(rows, open({str(tmp_path / "rows.json")!r}, "w"))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home")}  # a fresh datasets cache (see load_zoo_dataset)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    rows = json.loads((tmp_path / "rows.json").read_text())
    layout = TokenLayout.from_dict(json.loads((converted / "meta/layout.json").read_text()))
    norm = TokenNormalization.from_dict(json.loads((converted / "meta/normalization.json").read_text()))
    records = list(open_zoo(sane_zoo))
    assert sorted(rows) == sorted(f"{r.model_id}/{r.epoch}" for r in records)
    for record in records:
        row = rows[f"{record.model_id}/{record.epoch}"]
        # Models with Dropout modules have other key names: map them onto the layout's keys by position.
        state_dict = dict(zip(layout.keys, record.state_dict.values()))
        expected = norm.normalize(layout.tokenize(state_dict)[0], layout)
        assert row["shape"] == [layout.num_tokens, 16]
        assert torch.equal(torch.tensor(row["tokens"], dtype=torch.float32), expected)
        assert row["test_acc"] == record.properties["test_acc"]
        assert row["optimizer"] == record.properties["optimizer"]


def test_splits_are_disjoint_by_model_and_follow_the_floor_rule(converted, sane_zoo):
    zoo = load_zoo_dataset(converted)
    info = zoo.info
    ids = {name: set(split.model_ids) for name, split in info.splits.items()}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    assert not (ids["validation"] & ids["test"])
    assert set().union(*ids.values()) == {f"model_{i:04d}" for i in range(8)}
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [5, 1, 2]  # floor(5.6), floor(1.2), rest
    assert split_model_ids([f"model_{i:04d}" for i in range(8)], seed=42) == {
        name: sorted(v) for name, v in ids.items()
    }
    for name, split in zoo.splits.items():
        assert set(split["model_id"]) == ids[name]
        assert len(split) == 4 * len(ids[name])


def test_split_model_ids_rules():
    ids = [f"m{i:02d}" for i in range(20)]
    splits = split_model_ids(reversed(ids), (0.7, 0.15, 0.15), seed=1)
    assert splits == split_model_ids(ids, (0.7, 0.15, 0.15), seed=1)  # the input order does not matter
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [14, 3, 3]
    assert split_model_ids(ids, (0.7, 0.15, 0.15), seed=2) != splits
    two = split_model_ids(ids, (0.8, 0.2), seed=1, max_models=10)
    assert list(two) == ["train", "test"] and [len(two["train"]), len(two["test"])] == [8, 2]
    with pytest.raises(ValueError, match="sum to 1"):
        split_model_ids(ids, (0.5, 0.2, 0.2))


def test_loader_gives_torch_splits_layout_and_exact_round_trip(converted, sane_zoo):
    zoo = load_zoo_dataset(converted)
    assert list(zoo.splits) == ["train", "validation", "test"]
    row = zoo.splits["train"][0]
    assert isinstance(row["tokens"], torch.Tensor) and row["tokens"].dtype == torch.float32
    assert zoo.layout.num_tokens == zoo.info.num_tokens and zoo.normalization.num_checkpoints == 20
    assert "test_acc" in zoo.property_names
    state_dict = zoo.to_state_dict(row["tokens"])
    (record,) = [r for r in open_zoo(sane_zoo).read_member(row["model_id"]) if r.epoch == int(row["epoch"])]
    assert list(state_dict) == zoo.layout.keys  # the reference's key names, in state_dict order
    for value, original in zip(state_dict.values(), record.state_dict.values()):
        torch.testing.assert_close(value, original, rtol=1e-5, atol=1e-6)


def test_layout_follows_the_architecture_state_dict_order(converted):
    """Not the name-sorted order safetensors files come back in (module_list.11 before module_list.3)."""
    zoo = load_zoo_dataset(converted)
    reference = zoo.info.reference
    assert reference["epoch"] == 0 and reference["model_id"] in zoo.info.splits["train"].model_ids
    module = build_zoo_model(zoo.info.architecture, **zoo.info.model_kwargs)
    expected = TokenLayout.from_module(module, token_size=16)
    assert [layer.name for layer in zoo.layout.layers] == [layer.name for layer in expected.layers]
    assert zoo.layout.keys == list(module.state_dict())
    assert zoo.layout.positions.tolist() == expected.positions.tolist()


def test_normalization_is_fitted_on_train_only(tmp_path, zoo_tools, converted):
    zoo = zoo_tools.copy_zoo(
        Path(json.loads((converted / "meta/info.json").read_text())["source"]["zoo_dir"]), tmp_path / "z"
    )
    info = json.loads((converted / "meta/info.json").read_text())
    val_model = info["splits"]["validation"]["model_ids"][0]
    train_model = info["splits"]["train"]["model_ids"][0]

    def scale(model_id):
        file = zoo / f"models/{model_id}/checkpoints/epoch_0001.safetensors"
        save_file({k: 3 * v + 1 for k, v in load_file(file).items()}, file)

    scale(val_model)
    _convert(zoo, tmp_path / "ds_val")
    assert (tmp_path / "ds_val/meta/normalization.json").read_bytes() == (
        converted / "meta/normalization.json"
    ).read_bytes()
    scale(train_model)
    _convert(zoo, tmp_path / "ds_train")
    assert (tmp_path / "ds_train/meta/normalization.json").read_bytes() != (
        converted / "meta/normalization.json"
    ).read_bytes()


def test_same_seed_same_bytes_other_seed_other_splits(sane_zoo, converted, tmp_path):
    _convert(sane_zoo, tmp_path / "again")
    assert _files(tmp_path / "again") == _files(converted)
    result = _convert(sane_zoo, tmp_path / "seed7", seed=7)
    first = json.loads((converted / "meta/info.json").read_text())["splits"]
    assert {s: v.model_ids for s, v in result.info.splits.items()} != {s: v["model_ids"] for s, v in first.items()}


def test_small_shards_and_epoch_selection(sane_zoo, tmp_path):
    # One cnn_s checkpoint is 182 x 16 x 4 B = 11.6 KB: 0.02 MB shards hold one row each.
    result = _convert(sane_zoo, tmp_path / "ds", shard_size_mb=0.02, epochs=["1-2"], max_models=6)
    train = result.info.splits["train"]
    assert len(train.files) == train.num_checkpoints == 8
    assert train.files[0] == "data/train-00000-of-00008.parquet"
    zoo = load_zoo_dataset(tmp_path / "ds")
    assert sorted(set(zoo.splits["train"]["epoch"][:].tolist())) == [1, 2]
    assert zoo.info.epochs == [1, 2] and zoo.info.max_models == 6 and zoo.info.num_models == 6


def test_modelzoo_source_converts(tmp_path, zoo_tools):
    zoo = zoo_tools.write_modelzoo(tmp_path / "mz", num_models=4, num_epochs=2)
    result = _convert(zoo, tmp_path / "ds", split_fractions=[0.5, 0.5], token_size=0)
    assert list(result.info.splits) == ["train", "test"]
    assert result.info.token_size == 201  # widest row: the second conv, 8 x 5 x 5 weights + bias (SANE §1.5)
    ds = load_zoo_dataset(tmp_path / "ds")
    assert {"training_iteration", "ggap", "lr", "model_type"} <= set(ds.property_names)
    assert ds.splits["train"]["training_iteration"][:].tolist() == ds.splits["train"]["epoch"][:].tolist()


@pytest.mark.parametrize("problem", ["missing", "empty", "no_metrics", "corrupt", "mixed", "evil"])
def test_bad_input_raises_clearly_and_leaves_nothing(tmp_path, zoo_tools, problem):
    output = tmp_path / "out" / "ds"
    zoo = tmp_path / "zoo"
    if problem == "missing":
        expected, name = "zoo folder not found", str(zoo)
    elif problem == "empty":
        zoo.mkdir()
        expected, name = "empty", str(zoo)
    elif problem in ("no_metrics", "corrupt", "mixed"):
        zoo_tools.write_sane_hf_zoo(zoo, num_models=6, num_epochs=1)
        model = zoo / "models/model_0004"  # lands in the test split with seed 42: fails late, mid-write
        if problem == "no_metrics":
            (model / "metrics.jsonl").unlink()
            expected, name = "metrics.jsonl: missing", str(model / "metrics.jsonl")
        elif problem == "corrupt":
            file = model / "checkpoints/epoch_0001.safetensors"
            file.write_bytes(file.read_bytes()[:50])
            expected, name = "corrupt or truncated", str(file)
        else:
            file = model / "checkpoints/epoch_0000.safetensors"
            save_file(zoo_tools.model_state_dict(0, "mlp", in_features=64), file)
            expected, name = "another architecture", str(file)
    else:
        zoo_tools.write_modelzoo(zoo, num_models=3, num_epochs=1)
        file = zoo / "NN_tune_trainable_00001_seed=1/checkpoint_1/checkpoints"
        torch.save({"w": _Payload()}, file)
        expected, name = "refused to load", str(file)
    with pytest.raises((ZooFormatError, FileNotFoundError)) as err:
        _convert(zoo, output)
    assert expected in str(err.value) and name in str(err.value)
    assert "\n" not in str(err.value)
    if output.parent.exists():
        zoo_tools.assert_no_output(output)


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_existing_output_is_not_overwritten_unless_asked(sane_zoo, tmp_path):
    output = tmp_path / "ds"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _convert(sane_zoo, output)
    assert (output / "keep.txt").read_text() == "mine"
    _convert(sane_zoo, output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "meta/info.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_failed_background_shard_write_raises_and_leaves_nothing(sane_zoo, tmp_path, zoo_tools):
    # Shards are encoded in a background thread: its error must reach the caller, after which nothing is left.
    import pyarrow.parquet as pq

    write_table, calls = pq.write_table, []

    def failing_write(table, where, **options):
        calls.append(where)
        if len(calls) == 3:  # a later shard, while the main thread fills the next one
            Path(where).write_bytes(b"half a shard")
            raise OSError("No space left on device")
        return write_table(table, where, **options)

    output = tmp_path / "out" / "ds"
    with mock.patch.object(pq, "write_table", failing_write), pytest.raises(OSError, match="No space left"):
        _convert(sane_zoo, output, shard_size_mb=0.02)
    assert len(calls) == 3
    zoo_tools.assert_no_output(output)


def test_version_mismatch_and_missing_meta_are_clear_errors(converted, tmp_path, zoo_tools):
    broken = zoo_tools.copy_zoo(converted, tmp_path / "v99")
    info = json.loads((broken / "meta/info.json").read_text())
    (broken / "meta/info.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ZooDatasetVersionError, match="format_version 99.*reads format_version 1"):
        load_zoo_dataset(broken)
    assert issubclass(ZooDatasetVersionError, ValueError)

    no_layout = zoo_tools.copy_zoo(converted, tmp_path / "no_layout")
    (no_layout / "meta/layout.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta/layout.json: missing"):
        load_zoo_dataset(no_layout)

    extra = zoo_tools.copy_zoo(converted, tmp_path / "extra")
    (extra / "meta/info.json").write_text(json.dumps({**info, "added_later": 1}))
    assert load_zoo_dataset(extra).info.num_checkpoints == 32  # unknown keys: a warning, not an error


def test_push_uploads_the_folder_and_tags_the_format_version(sane_zoo, tmp_path):
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, repo_type, **kwargs):
        uploaded.update(repo_id=repo_id, repo_type=repo_type, files=sorted(_files(Path(folder_path))), **kwargs)
        return mock.Mock(oid="abc123", commit_url=f"https://hf.co/datasets/{repo_id}/commit/abc123")

    refs = mock.Mock(tags=[mock.Mock(ref="refs/tags/" + ZOO_DATASET_TAG)])
    refs.tags[0].name = ZOO_DATASET_TAG
    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
        mock.patch.object(HfApi, "list_repo_refs", return_value=refs),
        mock.patch.object(HfApi, "delete_tag") as delete_tag,
        mock.patch.object(HfApi, "create_tag") as create_tag,
    ):
        result = _convert(sane_zoo, tmp_path / "ds", push_to_hub="org/sane-zoo-test", private=True)
    create_repo.assert_called_once_with(repo_id="org/sane-zoo-test", repo_type="dataset", private=True, exist_ok=True)
    assert uploaded["repo_id"] == "org/sane-zoo-test" and uploaded["repo_type"] == "dataset"
    assert uploaded["files"] == sorted(_files(tmp_path / "ds"))
    assert "data/train-00000-of-00001.parquet" in uploaded["files"] and "README.md" in uploaded["files"]
    assert uploaded["delete_patterns"] == ["data/*", "meta/*"]
    delete_tag.assert_called_once()
    create_tag.assert_called_once_with(
        "org/sane-zoo-test", tag=ZOO_DATASET_TAG, revision="abc123", repo_type="dataset"
    )
    assert result.url.endswith("abc123")
    assert 'load_zoo_dataset("org/sane-zoo-test")' in (tmp_path / "ds/README.md").read_text()


def test_load_by_repo_id_uses_snapshot_download_for_meta(converted, tmp_path):
    """Which calls reach the Hub, and with what (loading by id for real runs against the olah mirror in
    tests/hub/test_hub_integration.py)."""
    real_load_dataset = datasets.load_dataset
    load_calls = []

    def load_dataset(repo, **kwargs):
        load_calls.append((repo, kwargs.get("revision")))
        # A cache of its own: datasets keys `load_dataset(folder)`'s cache on the folder's name, so another test's
        # folder of the same name, loaded earlier in the session, would answer with its rows.
        return real_load_dataset(str(converted), cache_dir=str(tmp_path / "datasets_cache"))

    with (
        mock.patch("huggingface_hub.snapshot_download", return_value=str(converted)) as download,
        mock.patch.object(datasets, "load_dataset", load_dataset),
    ):
        zoo = load_zoo_dataset("org/sane-zoo", revision=ZOO_DATASET_TAG)
    assert load_calls == [("org/sane-zoo", ZOO_DATASET_TAG)]  # the parquet shards: same repo, same revision
    kwargs = download.call_args.kwargs
    assert download.call_args.args == ("org/sane-zoo",)
    assert kwargs["repo_type"] == "dataset" and kwargs["revision"] == ZOO_DATASET_TAG
    assert kwargs["allow_patterns"] == ["meta/*", "README.md"]
    assert zoo.info.num_checkpoints == 32


def test_cli_reads_yaml_and_flags(sane_zoo, tmp_path, capsys):
    from sane_hf.cli import main_convert_zoo

    config = tmp_path / "convert.yaml"
    config.write_text(yaml.safe_dump({"zoo_dir": str(sane_zoo), "token_size": 16, "epochs": [0, 3]}))
    main_convert_zoo(["--config", str(config), "--output_dir", str(tmp_path / "ds"), "--seed", "3"])
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["epochs"] == [0, 3] and info["split_seed"] == 3 and info["token_size"] == 16
    assert "train" in capsys.readouterr().out


def test_config_validation():
    with pytest.raises(ValueError, match="zoo_format"):
        ConvertConfig(zoo_format="zip")
    with pytest.raises(ValueError, match="epochs"):
        ConvertConfig(epochs=["5-2"])
    with pytest.raises(ValueError, match="sum to 1"):
        ConvertConfig(split_fractions=[0.7, 0.7])
    assert ConvertConfig(epochs=["0", "21-23"]).epoch_list() == [0, 21, 22, 23]
    assert ConvertConfig(epochs="all").epoch_list() is None
    with pytest.raises(ValueError, match="zoo_dir"):
        convert_zoo(ConvertConfig(output_dir="x"))


def test_reloading_a_rewritten_folder_is_not_stale(sane_zoo, tmp_path):
    """`datasets.load_dataset(folder)` keys its cache on the folder name only; `load_zoo_dataset` must not."""
    output = tmp_path / "zoo_ds"  # the same name as the session's `converted` folder
    _convert(sane_zoo, output, epochs=["0"])
    assert load_zoo_dataset(output).splits["train"].num_rows == 5
    _convert(sane_zoo, output, epochs=["0-1"], overwrite=True)
    assert load_zoo_dataset(output).splits["train"].num_rows == 10


def test_canonicalize_maps_permuted_copies_onto_one_token_sequence(tmp_path, zoo_tools):
    """docs/method.md#canonicalization: models that are function-preserving permutations of one network become identical tokens,
    by default."""
    from sane_hf.tokenization import permutation_spec_from_module, permute_state_dict

    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=6, num_epochs=2)
    # Every model: the same drifting network as model 0, under its own random permutation of the hidden units.
    # (Odd models have Dropout modules, so their key names differ; keys correspond by position in module order.)
    module = build_zoo_model("cnn_s", input_size=8, padding="auto", in_channels=1)
    spec = permutation_spec_from_module(module)
    model_keys = list(module.state_dict())
    checkpoints = zoo / "models/model_0000/checkpoints"
    base = {e: load_file(checkpoints / f"epoch_{e:04d}.safetensors") for e in range(3)}
    base = {e: {k: sd[k] for k in model_keys} for e, sd in base.items()}
    for index in range(1, 6):
        params = json.loads((zoo / "models" / f"model_{index:04d}" / "params.json").read_text())
        keys = list(build_zoo_model("cnn_s", **params["model_kwargs"]).state_dict())
        g = torch.Generator().manual_seed(index)
        perms = {name: torch.randperm(size, generator=g) for name, size in spec.groups.items()}
        for epoch, state_dict in base.items():
            permuted = permute_state_dict(state_dict, spec, perms)
            path = zoo / "models" / f"model_{index:04d}" / "checkpoints" / f"epoch_{epoch:04d}.safetensors"
            save_file(dict(zip(keys, permuted.values())), path)

    plain = load_zoo_dataset(_convert(zoo, tmp_path / "plain", normalization="none").output_dir)
    # The default (None): on for a registered architecture, as the method canonicalizes every zoo.
    result = _convert(zoo, tmp_path / "canon", normalization="none", canonicalize=None)
    canon = load_zoo_dataset(result.output_dir)
    assert result.info.canonicalized and not plain.info.canonicalized
    assert result.info.reference["canonical_epoch"] == 2

    def tokens_by_epoch(zoo_ds):
        rows = {}
        for split in zoo_ds.splits.values():
            for row in split.with_format("torch"):
                rows.setdefault(int(row["epoch"]), []).append(row["tokens"])
        return rows

    for epoch, rows in tokens_by_epoch(canon).items():
        assert all(torch.allclose(rows[0], other, atol=1e-6) for other in rows[1:]), epoch
    assert not all(torch.allclose(r[0], r[1]) for r in tokens_by_epoch(plain).values())
    # Canonical tokens decode to a network that computes the same function as the original one.
    restored = canon.layout.detokenize(tokens_by_epoch(canon)[2][0])
    original, decoded = build_zoo_model("cnn_s", input_size=8, padding="auto", in_channels=1), module
    original.load_state_dict(base[2])
    decoded.load_state_dict(dict(zip(model_keys, restored.values())))
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decoded.eval()(images), original.eval()(images), atol=1e-5, rtol=1e-5)
