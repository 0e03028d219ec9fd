"""Tests of `sane_hf.data.zoo_builder`: the on-disk zoo format, seeding, resuming and the `make_zoo` CLI (tiny zoos)."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sane_hf.cli import main_make_zoo
from sane_hf.data import zoo_builder
from sane_hf.data.zoo_builder import (
    ZOO_FORMAT,
    ZOO_FORMAT_VERSION,
    ZooConfig,
    build_zoo,
    plan_model,
    resolve_model_kwargs,
)
from sane_hf.data.zoo_format import METRIC_KEYS
from sane_hf.tasks import evaluate_split, load_task
from sane_hf.zoo_models import build_zoo_model


REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "scripts" / "configs" / "zoo_tiny_test.yaml"
PARAMS_KEYS = {
    "model_id",
    "index",
    "architecture",
    "model_kwargs",
    "task",
    "seed",
    "lr",
    "weight_decay",
    "optimizer",
    "init",
    "activation",
    "dropout",
    "batch_size",
    "epochs",
}
# One group of three models trained together (one optimizer, one activation), with dropout and varied inits.
GROUP = dict(optimizers=["adam"], activations=["tanh"], dropouts=[0.0, 0.3], learning_rates=[3e-3, 1e-2])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def tiny_config(output_dir: Path, **overrides) -> ZooConfig:
    values = dict(output_dir=str(output_dir), num_models=3, epochs=2, batch_size=100, seed=3)
    values.update(overrides)
    return ZooConfig(**values)


def snapshot(zoo_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `zoo_dir`: relative path -> (content, mtime in ns)."""
    return {
        str(path.relative_to(zoo_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(zoo_dir.rglob("*"))
        if path.is_file()
    }


def results(zoo_dir: Path) -> dict[str, bytes]:
    """What must be reproducible: checkpoints, metrics and params of every model."""
    return {
        path: content
        for path, (content, _) in snapshot(zoo_dir).items()
        if path.endswith((".safetensors", "metrics.jsonl", "params.json"))
    }


@pytest.fixture(scope="module")
def grouped_zoo(tmp_path_factory, digits) -> Path:
    """A finished, uninterrupted zoo of one training group; tests copy it before changing anything."""
    zoo_dir = tmp_path_factory.mktemp("zoo") / "grouped"
    summary = build_zoo(tiny_config(zoo_dir, **GROUP), digits)
    assert summary["trained"] == 3 and summary["num_done"] == 3
    return zoo_dir


def test_layout_is_the_contract(grouped_zoo, digits):
    config = tiny_config(grouped_zoo, **GROUP)
    stored = json.loads((grouped_zoo / "zoo_config.json").read_text())
    assert stored["format"] == ZOO_FORMAT and stored["format_version"] == ZOO_FORMAT_VERSION == 1
    assert set(stored) == {f.name for f in fields(ZooConfig)} | {"format", "format_version"}
    assert {k: v for k, v in stored.items() if k not in ("format", "format_version", "task")} == {
        k: v for k, v in config.to_dict().items() if k != "task"
    }
    assert stored["task"]["name"] == "digits"
    assert stored["task"]["num_classes"] == 10
    assert stored["task"]["input_shape"] == [1, 8, 8]
    assert stored["task"]["split_sizes"] == {"train": 1000, "val": 400, "test": 397}

    expected_files = {"zoo_config.json"}
    for index in range(3):
        model_id = f"model_{index:04d}"
        expected_files |= {f"models/{model_id}/{name}" for name in ("params.json", "metrics.jsonl", "DONE")}
        expected_files |= {f"models/{model_id}/checkpoints/epoch_{e:04d}.safetensors" for e in range(3)}
    # Exactly these files: no temporary leftovers.
    assert set(snapshot(grouped_zoo)) == expected_files

    for index in range(3):
        folder = grouped_zoo / "models" / f"model_{index:04d}"
        params = json.loads((folder / "params.json").read_text())
        assert PARAMS_KEYS <= set(params)
        assert params["model_id"] == f"model_{index:04d}" and params["index"] == index
        assert params["architecture"] == "cnn_s" and params["task"] == "digits"
        assert params["optimizer"] == "adam" and params["activation"] == "tanh"
        assert params["batch_size"] == 100 and params["epochs"] == 2
        kwargs = params["model_kwargs"]
        assert {"activation", "init", "dropout", "in_channels", "input_size", "num_classes", "padding"} <= set(kwargs)
        assert (kwargs["activation"], kwargs["init"], kwargs["dropout"]) == (
            params["activation"],
            params["init"],
            params["dropout"],
        )
        assert (kwargs["in_channels"], kwargs["input_size"], kwargs["num_classes"]) == (1, 8, 10)

        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 3
        for epoch, line in enumerate(lines):
            assert tuple(line) == METRIC_KEYS
            assert line["epoch"] == epoch
            assert line["ggap"] == pytest.approx(line["train_acc"] - line["test_acc"])
            assert 0.0 <= line["test_acc"] <= 1.0
        done = json.loads((folder / "DONE").read_text())
        assert done["model_id"] == params["model_id"] and done["final_metrics"] == lines[-1]

        model = build_zoo_model(params["architecture"], **params["model_kwargs"])
        for epoch in range(3):
            path = folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"
            model.load_state_dict(load_file(path), strict=True)
            with safe_open(path, "pt") as f:
                assert f.metadata()["epoch"] == str(epoch)
                assert f.metadata()["model_id"] == params["model_id"]
        # The metrics belong to the checkpoint: the last one evaluated with the plain module gives the same numbers.
        test = evaluate_split(model, *digits.test)
        assert test["acc"] == pytest.approx(lines[-1]["test_acc"], abs=1.5 / 397)
        assert test["loss"] == pytest.approx(lines[-1]["test_loss"], rel=1e-4)


def test_training_moves_the_weights_and_models_differ(grouped_zoo):
    first = [load_file(grouped_zoo / f"models/model_{i:04d}/checkpoints/epoch_0000.safetensors") for i in range(3)]
    last = [load_file(grouped_zoo / f"models/model_{i:04d}/checkpoints/epoch_0002.safetensors") for i in range(3)]
    key = "module_list.0.weight"
    assert not torch.equal(first[0][key], first[1][key])
    assert all(not torch.equal(a[key], b[key]) for a, b in zip(first, last))
    lines = [json.loads(line) for line in (grouped_zoo / "models/model_0000/metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_factors_depend_only_on_seed_and_index(digits):
    config = tiny_config("unused", num_models=3)
    bigger = tiny_config("unused", num_models=50)
    base = resolve_model_kwargs(config, digits)
    plans = [plan_model(config, i, base) for i in range(3)]
    assert plans == [plan_model(bigger, i, base) for i in range(3)]
    assert len({plan.seed for plan in plans}) == 3
    many = [plan_model(bigger, i, base) for i in range(50)]
    assert {plan.optimizer for plan in many} == set(config.optimizers)
    assert {plan.activation for plan in many} == set(config.activations)
    other_seed = tiny_config("unused", num_models=3, seed=4)
    assert [plan_model(other_seed, i, base) for i in range(3)] != plans


def test_rerun_skips_finished_models(grouped_zoo, tmp_path, digits, monkeypatch):
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(grouped_zoo, zoo_dir, copy_function=shutil.copy2)
    before = snapshot(zoo_dir)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr(zoo_builder._ZooRun, "train_group", no_training)
    monkeypatch.setattr(zoo_builder._ZooRun, "train_single", no_training)
    summary = build_zoo(tiny_config(zoo_dir, **GROUP), digits)
    assert summary["trained"] == 0 and summary["skipped"] == 3
    assert snapshot(zoo_dir) == before


def test_interrupted_build_resumes_bit_identically(grouped_zoo, tmp_path, digits, monkeypatch):
    zoo_dir = tmp_path / "zoo"
    config = tiny_config(zoo_dir, **GROUP)
    original = zoo_builder._ModelWriter.write_epoch
    calls = {"n": 0}

    def crash_in_epoch_1(self, epoch, state_dict, line):
        calls["n"] += 1
        if epoch == 1 and self.model_id == "model_0001":
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, state_dict, line)

    monkeypatch.setattr(zoo_builder._ModelWriter, "write_epoch", crash_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(config, digits)
    monkeypatch.setattr(zoo_builder._ModelWriter, "write_epoch", original)
    assert not any((zoo_dir / "models" / f"model_{i:04d}" / "DONE").exists() for i in range(3))
    assert not list(zoo_dir.rglob("*.tmp"))

    summary = build_zoo(config, digits)
    assert summary["trained"] == 3 and summary["num_done"] == 3
    assert results(zoo_dir) == results(grouped_zoo)


def test_unfinished_member_of_a_finished_group_is_redone(grouped_zoo, tmp_path, digits):
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(grouped_zoo, zoo_dir, copy_function=shutil.copy2)
    broken = zoo_dir / "models" / "model_0001"
    (broken / "DONE").unlink()
    (broken / "checkpoints" / "epoch_0002.safetensors").unlink()
    (broken / "checkpoints" / "epoch_0001.safetensors").write_bytes(b"truncated")
    before = snapshot(zoo_dir)

    summary = build_zoo(tiny_config(zoo_dir, **GROUP), digits)
    assert summary["trained"] == 1 and summary["skipped"] == 2
    after = snapshot(zoo_dir)
    assert results(zoo_dir) == results(grouped_zoo)
    # The finished members were not rewritten.
    for path, (content, mtime) in before.items():
        if not path.startswith("models/model_0001"):
            assert after[path] == (content, mtime)


def test_unbatched_build_matches_batched_and_resumes(grouped_zoo, tmp_path, digits, monkeypatch):
    # Without dropout the batched trainer and the one-model-at-a-time path train the same models up to rounding.
    overrides = dict(GROUP, dropouts=[0.0], num_models=2)
    batched_dir, single_dir = tmp_path / "batched", tmp_path / "single"
    build_zoo(tiny_config(batched_dir, **overrides), digits)
    config = tiny_config(single_dir, batched=False, **overrides)
    original = zoo_builder.train_epoch
    calls = {"n": 0}

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(zoo_builder, "train_epoch", crash_on_third_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_zoo(config, digits)
    monkeypatch.setattr(zoo_builder, "train_epoch", original)
    assert (single_dir / "models/model_0000/DONE").exists()
    assert not (single_dir / "models/model_0001/DONE").exists()
    assert build_zoo(config, digits)["trained"] == 1

    uninterrupted = tmp_path / "single_uninterrupted"
    build_zoo(tiny_config(uninterrupted, batched=False, **overrides), digits)
    assert results(single_dir) == results(uninterrupted)
    for index in range(2):
        for epoch in range(3):
            name = f"models/model_{index:04d}/checkpoints/epoch_{epoch:04d}.safetensors"
            a, b = load_file(batched_dir / name), load_file(single_dir / name)
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_config_mismatch_is_an_error(grouped_zoo, tmp_path, digits):
    zoo_dir = tmp_path / "zoo"
    shutil.copytree(grouped_zoo, zoo_dir)
    with pytest.raises(ValueError, match=r"differing fields: epochs, learning_rates\)"):
        build_zoo(tiny_config(zoo_dir, **dict(GROUP, learning_rates=[0.1]), epochs=3), digits)
    # Runtime options may change on resume.
    assert build_zoo(tiny_config(zoo_dir, num_threads=2, **GROUP), digits)["trained"] == 0


def test_bad_configurations(tmp_path, digits):
    with pytest.raises(ValueError, match="`learning_rates` must be a float in"):
        ZooConfig(learning_rates=[0.0])
    with pytest.raises(ValueError, match=r"`optimizers` must only hold values from \['sgd', 'adam', 'adamw'\]"):
        ZooConfig(optimizers=["lbfgs"])
    with pytest.raises(ValueError, match="must not set 'dropout'"):
        ZooConfig(model_kwargs={"dropout": 0.1})
    with pytest.raises(ValueError, match="`model_kwargs` must be a JSON object"):
        ZooConfig(model_kwargs="{not json")
    with pytest.raises(ValueError, match="Unknown zoo architecture 'gpt2'"):
        ZooConfig(architecture="gpt2")
    assert ZooConfig(learning_rates=["1e-3"]).learning_rates == [0.001]  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ValueError, match=r"num_classes=5 contradicts task 'digits' \(num_classes=10\)"):
        build_zoo(tiny_config(tmp_path / "a", model_kwargs={"num_classes": 5, "padding": "auto"}), digits)
    with pytest.raises(ValueError, match=r"does not take \['width'\]"):
        build_zoo(tiny_config(tmp_path / "b", model_kwargs={"width": 3}), digits)
    with pytest.raises(ValueError, match="has no `activation` argument"):
        build_zoo(tiny_config(tmp_path / "c", architecture="resnet18", model_kwargs={"width": 2}), digits)
    (tmp_path / "d" / "models" / "model_0000").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a zoo written by build_zoo"):
        build_zoo(tiny_config(tmp_path / "d"), digits)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mlp_zoo_is_batched(tmp_path, digits):
    zoo_dir = tmp_path / "mlp"
    build_zoo(tiny_config(zoo_dir, architecture="mlp", model_kwargs={"hidden_sizes": [16]}, epochs=1), digits)
    params = json.loads((zoo_dir / "models/model_0002/params.json").read_text())
    assert params["model_kwargs"]["in_features"] == 64
    model = build_zoo_model("mlp", **params["model_kwargs"])
    model.load_state_dict(load_file(zoo_dir / "models/model_0002/checkpoints/epoch_0001.safetensors"), strict=True)


def test_cli_make_zoo(tmp_path, capsys):
    output_dir = tmp_path / "cli_zoo"
    main_make_zoo(["--config", str(TINY_YAML), "--output_dir", str(output_dir), "--num_models", "2", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "2/2 models finished" in out and "final test accuracy" in out
    stored = json.loads((output_dir / "zoo_config.json").read_text())
    assert stored["num_models"] == 2 and stored["epochs"] == 1 and stored["output_dir"] == str(output_dir)
    assert len(list((output_dir / "models").glob("model_*/DONE"))) == 2

    with pytest.raises(SystemExit) as exit_info:
        main_make_zoo(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for f in fields(ZooConfig):
        assert f"--{f.name}" in help_text, f.name
    assert "--config" in help_text


def test_default_yaml_is_the_dataclass_default():
    import yaml

    values = yaml.safe_load((REPO / "scripts" / "configs" / "zoo_digits_cnn.yaml").read_text())
    assert ZooConfig(**values) == ZooConfig(output_dir=values["output_dir"])
