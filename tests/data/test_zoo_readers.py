"""Zoo readers (docs/zoo_dataset_format.md): sorted listing, lazy records, properties, filtering, bad input."""

import json
import math
import os
import types
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from sane_hf.data import (
    HubModelsReader,
    ModelZooReader,
    SaneHfZooReader,
    ZooFormatError,
    detect_zoo_format,
    load_pickle_checkpoint,
    open_zoo,
)
from sane_hf.data.zoo import natural_key_order
from sane_hf.zoo_models import build_zoo_model


CNN_KWARGS = {"input_size": 8, "padding": "auto", "in_channels": 1}


def test_sane_hf_reader_lists_sorted_finished_models_and_reports_unfinished(sane_zoo):
    reader = open_zoo(sane_zoo)
    assert isinstance(reader, SaneHfZooReader)
    assert reader.model_ids == [f"model_{i:04d}" for i in range(8)]
    assert reader.report.skipped_models == [{"model_id": "model_0008", "reason": "unfinished (no DONE file)"}]
    assert reader.architecture == "cnn_s"
    assert reader.model_kwargs == {"input_size": 8, "padding": "auto", "in_channels": 1, "dropout": 0.0}
    assert reader.source_info()["task"]["name"] == "digits"


def test_sane_hf_records_are_lazy_and_exact(sane_zoo, zoo_tools):
    reader = open_zoo(sane_zoo, "sane_hf")
    records = reader.iter_checkpoints(["model_0003"])
    assert isinstance(records, types.GeneratorType)  # nothing is loaded before iteration
    records = list(records)
    assert [r.epoch for r in records] == [0, 1, 2, 3]
    record = records[2]
    expected = load_file(sane_zoo / "models/model_0003/checkpoints/epoch_0002.safetensors")
    assert all(torch.equal(record.state_dict[k], v) for k, v in expected.items())
    # safetensors sorts keys by name; records come in the architecture's state_dict order (SANE §1.1).
    model = build_zoo_model("cnn_s", **CNN_KWARGS, dropout=0.1)
    assert list(record.state_dict) == list(model.state_dict()) != list(expected)
    metrics = zoo_tools.metrics_line(3, 2)
    props = record.properties
    for key in ("test_acc", "train_acc", "val_acc", "train_loss", "val_loss", "test_loss", "ggap"):
        assert props[key] == metrics[key]
    assert props["epoch"] == 2
    assert props["optimizer"] == "sgd" and props["seed"] == 3 and props["num_epochs"] == 3
    assert "epochs" not in props and "model_kwargs" not in props and "task" not in props
    assert record.architecture == "cnn_s" and record.source.endswith("epoch_0002.safetensors")
    assert reader.report.num_checkpoints_read == 4 and reader.report.num_models_kept == 1


def test_filtering_drops_nan_and_above_threshold_and_reports(tmp_path, zoo_tools):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=3, num_epochs=2)
    # model_0000 epoch 1: a NaN; model_0001: every epoch above the threshold; model_0002 untouched.
    file = zoo / "models/model_0000/checkpoints/epoch_0001.safetensors"
    state_dict = load_file(file)
    state_dict["module_list.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state_dict, file)
    for epoch in range(3):
        file = zoo / f"models/model_0001/checkpoints/epoch_{epoch:04d}.safetensors"
        state_dict = load_file(file)
        state_dict["module_list.14.bias"][0] = 500.0  # model_0001 has Dropout modules: keys 0, 4, 8, 11, 14
        save_file(state_dict, file)
    reader = open_zoo(zoo, weight_threshold=100)
    kept = [(r.model_id, r.epoch) for r in reader]
    assert kept == [("model_0000", 0), ("model_0000", 2), ("model_0002", 0), ("model_0002", 1), ("model_0002", 2)]
    report = reader.report
    assert report.counts() == {"non_finite": 1, "above_threshold": 3}
    assert report.dropped_models == [{"model_id": "model_0001", "reason": "no_surviving_checkpoint"}]
    assert (report.num_checkpoints_read, report.num_checkpoints_kept, report.num_models_kept) == (9, 5, 2)
    assert "kept 5/9" in report.summary()
    assert report.to_dict()["weight_threshold"] == 100
    # Without a threshold only the NaN goes (the original's default, inf).
    assert len(list(open_zoo(zoo))) == 8


def test_epoch_selection_reports_missing_epochs(sane_zoo):
    reader = open_zoo(sane_zoo, epochs=[1, 3, 7])
    records = list(reader.iter_checkpoints(["model_0000", "model_0001"]))
    assert [(r.model_id, r.epoch) for r in records] == [
        ("model_0000", 1),
        ("model_0000", 3),
        ("model_0001", 1),
        ("model_0001", 3),
    ]
    assert reader.report.counts() == {"missing_checkpoint": 2}


@pytest.mark.parametrize("with_init", [True, False])
def test_modelzoo_reader_aligns_properties_with_epochs(tmp_path, zoo_tools, with_init):
    zoo = zoo_tools.write_modelzoo(tmp_path / "zoo", num_models=2, num_epochs=3, with_init=with_init)
    reader = open_zoo(zoo)
    assert isinstance(reader, ModelZooReader)
    assert reader.model_ids == ["NN_tune_trainable_00000_seed=0", "NN_tune_trainable_00001_seed=1"]
    assert reader.architecture == "cnn_s"
    assert reader.model_kwargs["activation"] == "tanh"
    records = list(reader)
    first = 0 if with_init else 1
    assert [r.epoch for r in records] == list(range(first, 4)) * 2
    for record in records:
        index = int(record.model_id[-1])
        metrics = zoo_tools.metrics_line(index, record.epoch)
        # The line with training_iteration == epoch, whatever the offset (docs/zoo_dataset_format.md).
        assert record.properties["test_acc"] == metrics["test_acc"]
        assert record.properties["training_iteration"] == record.epoch
        assert record.properties["ggap"] == pytest.approx(metrics["train_acc"] - metrics["test_acc"])
        assert record.properties["lr"] == pytest.approx(1e-3 * (index + 1))
        assert record.properties["optimizer"] == "adam" and record.properties["num_epochs"] == 3
        assert "hostname" not in record.properties and "time_this_iter_s" not in record.properties
        expected = torch.load(record.source, weights_only=True)
        assert all(torch.equal(record.state_dict[k], v) for k, v in expected.items())


class _Evil:
    """Unpickling this would create a folder (harmless, but observable)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_code_is_refused_and_never_executed(tmp_path, zoo_tools):
    zoo = zoo_tools.write_modelzoo(tmp_path / "zoo", num_models=2, num_epochs=1)
    marker = tmp_path / "pwned"
    target = zoo / "NN_tune_trainable_00001_seed=1/checkpoint_1/checkpoints"
    torch.save({"module_list.0.weight": _Evil(str(marker))}, target)
    with pytest.raises(ZooFormatError, match="refused to load") as err:
        list(open_zoo(zoo))
    assert str(target) in str(err.value) and "weights_only=False" in str(err.value)
    assert not marker.exists()


def test_corrupt_checkpoints_name_the_file(tmp_path, zoo_tools):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=2, num_epochs=1)
    file = zoo / "models/model_0001/checkpoints/epoch_0001.safetensors"
    file.write_bytes(file.read_bytes()[:-20])
    with pytest.raises(ZooFormatError, match="corrupt or truncated safetensors") as err:
        list(open_zoo(zoo))
    assert str(file) in str(err.value)

    pickle_file = tmp_path / "truncated.pt"
    torch.save({"w": torch.randn(10, 10)}, pickle_file)
    pickle_file.write_bytes(pickle_file.read_bytes()[:100])
    with pytest.raises(ZooFormatError, match="corrupt or truncated") as err:
        load_pickle_checkpoint(pickle_file)
    assert str(pickle_file) in str(err.value)
    torch.save([torch.zeros(1)], pickle_file)
    with pytest.raises(ZooFormatError, match="expected a state_dict"):
        load_pickle_checkpoint(pickle_file)


def test_missing_and_empty_zoos_and_metadata(tmp_path, zoo_tools, monkeypatch):
    with pytest.raises(ZooFormatError, match="not found"):
        open_zoo(tmp_path / "nope")
    monkeypatch.chdir(tmp_path)
    with mock.patch("huggingface_hub.snapshot_download") as download:
        with pytest.raises(ZooFormatError, match="runs/zoo: zoo folder not found"):
            open_zoo("runs/zoo")  # a missing relative folder is never taken for a Hub repo id
    download.assert_not_called()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooFormatError, match="empty"):
        open_zoo(tmp_path / "empty")
    with pytest.raises(ZooFormatError, match="empty"):
        SaneHfZooReader(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(ZooFormatError, match="unknown zoo layout"):
        open_zoo(tmp_path / "other")

    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=2, num_epochs=1)
    (zoo / "models/model_0001/metrics.jsonl").unlink()
    with pytest.raises(ZooFormatError, match="metrics.jsonl: missing"):
        list(open_zoo(zoo))
    for folder in (zoo / "models").iterdir():
        (folder / "DONE").unlink()
    with pytest.raises(ZooFormatError, match="no finished models"):
        _ = open_zoo(zoo).members

    config = json.loads((zoo / "zoo_config.json").read_text())
    (zoo / "zoo_config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(ZooFormatError, match="format_version 1, found 7"):
        open_zoo(zoo)

    modelzoo = zoo_tools.write_modelzoo(tmp_path / "mz", num_models=2, num_epochs=1)
    (modelzoo / "NN_tune_trainable_00000_seed=0/result.json").unlink()
    with pytest.raises(ZooFormatError, match="result.json: missing"):
        _ = open_zoo(modelzoo, "modelzoo").members


def test_key_names_may_differ_when_the_ordered_shapes_match(sane_zoo):
    """cnn_s with and without Dropout modules: other `module_list` indices, the same tensors in the same order."""
    reader = open_zoo(sane_zoo)
    without, with_dropout = next(reader.read_member("model_0000")), next(reader.read_member("model_0001"))
    assert list(without.state_dict)[2] == "module_list.3.weight"
    assert list(with_dropout.state_dict)[2] == "module_list.4.weight"
    assert [v.shape for v in without.state_dict.values()] == [v.shape for v in with_dropout.state_dict.values()]


def test_unknown_architectures_fall_back_to_a_natural_key_order(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(12)])
    (tmp_path / "m").mkdir()
    save_file(model.state_dict(), tmp_path / "m" / "model.safetensors")
    (record,) = open_zoo(tmp_path / "m")
    assert list(record.state_dict) == list(model.state_dict())  # 0, 1, ..., 11, not 0, 1, 10, 11, 2, ...
    assert natural_key_order(["bn.running_var", "bn.bias", "bn.weight", "a.10.weight", "a.9.bias"]) == [
        "a.9.bias",
        "a.10.weight",
        "bn.weight",
        "bn.bias",
        "bn.running_var",
    ]


def test_mixed_architecture_is_an_error_naming_the_file(tmp_path, zoo_tools):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=3, num_epochs=1)
    other = zoo_tools.model_state_dict(0, "mlp", in_features=64)
    file = zoo / "models/model_0002/checkpoints/epoch_0000.safetensors"
    save_file(other, file)
    with pytest.raises(ZooFormatError, match="another architecture") as err:
        list(open_zoo(zoo))
    assert (
        str(file) in str(err.value) and "model_0000" in str(err.value) and "6 tensors instead of 10" in str(err.value)
    )
    # Same keys, another shape: the message says which key.
    wide = zoo_tools.model_state_dict(0, "cnn_s", input_size=8, padding="auto", in_channels=3)
    save_file(wide, file)
    with pytest.raises(ZooFormatError, match=r"'module_list.0.weight' has shape \[8, 3, 5, 5\]"):
        list(open_zoo(zoo))


def test_models_reader_local_folders_and_repo_ids(tmp_path, zoo_tools):
    root = tmp_path / "models"
    zoo_tools.write_model_folder(root / "b_model", 1, properties={"test_acc": 0.5})
    zoo_tools.write_model_folder(root / "a_model", 0, pickle=True)
    (root / "not_a_model").mkdir()
    assert detect_zoo_format(root) == "models"
    reader = open_zoo(root)
    assert isinstance(reader, HubModelsReader)
    assert reader.model_ids == ["a_model", "b_model"]
    assert reader.architecture == "cnn_s" and reader.model_kwargs["input_size"] == 8
    records = list(reader)
    assert [r.epoch for r in records] == [0, 0]
    assert records[1].properties == {"test_acc": 0.5, "epoch": 0}
    assert records[0].source.endswith("a_model")

    # Repo ids go through snapshot_download (patched: the Hub is offline in tests).
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(root / "b_model")) as download:
        reader = open_zoo("org/b-model,org/c-model", "models")
        assert reader.model_ids == ["org/b-model", "org/c-model"]
        assert len(list(reader)) == 2
    assert download.call_args.args[0] in ("org/b-model", "org/c-model")


def test_threshold_must_be_positive(sane_zoo):
    with pytest.raises(ValueError, match="weight_threshold"):
        open_zoo(sane_zoo, weight_threshold=0)
    assert open_zoo(sane_zoo, weight_threshold=math.inf).weight_threshold == math.inf


def test_a_checkpoint_without_metrics_names_the_metrics_file(tmp_path, zoo_tools):
    zoo = zoo_tools.write_sane_hf_zoo(tmp_path / "zoo", num_models=1, num_epochs=2)
    metrics = zoo / "models/model_0000/metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))  # epochs 0, 1 only
    with pytest.raises(ZooFormatError, match=rf"{metrics}: no metrics for epoch 2, which has a checkpoint"):
        list(open_zoo(zoo))
    assert [r.epoch for r in open_zoo(zoo, epochs=[0, 1])] == [0, 1]
