"""`scripts/predict_properties.py` end to end on a tiny zoo and a tiny SANE, fine-tuning, and bad-input errors."""

import json
import logging
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from sane_hf.cli import main_predict, parse_config
from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.models.sane import SaneConfig, SaneModel
from sane_hf.probing import report
from sane_hf.probing.configs import PredictConfig
from sane_hf.probing.finetune import finetune_property_predictor
from sane_hf.probing.predict import predict_properties
from sane_hf.tokenization import SaneProcessor, TokenNormalization
from sane_hf.tokenization.normalization import token_transform_for
from sane_hf.tokenization.processing_sane import load_sane_processor
from sane_hf.zoo_models import build_zoo_model


REPO = Path(__file__).resolve().parents[2]
MLP_KWARGS = {"in_features": 8, "hidden_sizes": [6], "num_classes": 3}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_zoo(root: Path, num_models: int = 12, num_epochs: int = 3) -> Path:
    """A tiny zoo in sane_hf's own format: MLPs whose weights grow with the epoch; accuracy follows the weight scale
    and the model index, the optimizer alternates (a categorical property)."""
    (root / "models").mkdir(parents=True)
    task = {"name": "synthetic", "num_classes": 3}
    (root / "zoo_config.json").write_text(json.dumps({"format": "sane_hf-zoo", "format_version": 1, "task": task}))
    for index in range(num_models):
        folder = root / "models" / f"model_{index:04d}"
        (folder / "checkpoints").mkdir(parents=True)
        torch.manual_seed(index)
        base = build_zoo_model("mlp", **MLP_KWARGS).state_dict()
        params = {
            "model_id": folder.name,
            "architecture": "mlp",
            "model_kwargs": MLP_KWARGS,
            "seed": index,
            "optimizer": ("adam", "sgd")[index % 2],
        }
        (folder / "params.json").write_text(json.dumps(params))
        lines = []
        for epoch in range(num_epochs + 1):
            state = {k: (v * (1 + 0.3 * epoch)).contiguous() for k, v in base.items()}
            save_file(state, str(folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"))
            accuracy = 0.3 + 0.1 * epoch + 0.01 * index
            metrics = {
                "epoch": epoch,
                "test_acc": accuracy,
                "train_acc": accuracy + 0.02,
                "ggap": 0.02 + 0.001 * index,
            }
            lines.append(json.dumps(metrics))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "DONE").write_text("{}")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A converted tiny zoo and a freshly initialized SANE saved for it (with the zoo's layout/normalization)."""
    root = tmp_path_factory.mktemp("predict")
    dataset = root / "zoo_ds"
    convert_zoo(
        ConvertConfig(zoo_dir=str(_write_zoo(root / "zoo")), output_dir=str(dataset), token_size=9, seed=0),
        show_progress=False,
    )
    zoo = load_zoo_dataset(dataset)
    model_dir = root / "sane"
    _save_sane(zoo, model_dir)
    return {"root": root, "dataset": dataset, "model": model_dir, "zoo": zoo}


def _save_sane(zoo, folder: Path, token_size: int | None = None, normalization: dict | None = None) -> SaneModel:
    torch.manual_seed(0)
    layout = zoo.layout
    config = SaneConfig(
        token_size=token_size or layout.token_size,
        d_model=16,
        n_heads=2,
        n_layers=1,
        latent_dim=4,
        window_size=8,
        max_positions=[max(b, 8) for b in layout.max_positions],
    )
    model = SaneModel(config)
    model.save_pretrained(folder)
    SaneProcessor(layout, normalization or zoo.normalization).save_pretrained(folder)
    return model


def test_script_end_to_end(tiny, tmp_path):
    output = tmp_path / "predict"
    argv = [
        "predict_properties.py",
        "--model",
        str(tiny["model"]),
        "--dataset",
        str(tiny["dataset"]),
        "--output_dir",
        str(output),
        "--properties",
        "test_acc",
        "optimizer",
        "--finetune_epochs",
        "1",
        "--embed_permutations",
        "2",
        "--gradient_boosting",
        "false",
        "--num_threads",
        "1",
    ]
    with mock.patch.object(sys, "argv", argv):
        runpy.run_path(str(REPO / "scripts" / "predict_properties.py"), run_name="__main__")
    results = json.loads((output / "results.json").read_text())
    records = results["records"]
    methods = {r["method"] for r in records}
    assert {"W", "s(W)", "SANE mean", "SANE mean+layers", "SANE concat", "SANE fine-tuned"} <= methods
    assert {"SANE mean (perm-avg)", "SANE concat (perm-avg)"} <= methods
    assert results["tasks"] == {"test_acc": "regression", "optimizer": "classification"}
    for record in records:
        assert set(record["scores"]) == {"train", "validation", "test"}
        if record["task"] == "regression" and record["method"] in ("W", "s(W)", "SANE mean"):
            assert record["metric"] == "r2" and record["alpha"] is not None
    scalings = {r["scaling"] for r in records if r["method"] == "SANE mean" and r["property"] == "test_acc"}
    assert scalings == {"none", "standardize"}
    classifier = [r for r in records if r["property"] == "optimizer"]
    assert classifier and all(r["metric"] == "accuracy" and r["classes"] == ["adam", "sgd"] for r in classifier)
    # The raw weights predict this zoo's accuracy (it follows the weight scale) far above chance.
    w_test_acc = next(r for r in records if r["property"] == "test_acc" and r["method"] == "s(W)")
    assert w_test_acc["scores"]["test"] > 0.5
    table = (output / "results.md").read_text()
    assert "| property | metric | W | s(W) | SANE linear probe (mean) | SANE fine-tuned |" in table
    assert "| test_acc | r2 |" in table and "| optimizer | accuracy |" in table
    pngs = {"scatter_test_acc.png", "pca_sane_embeddings.png"}
    if report._matplotlib_available():
        assert pngs <= {p.name for p in output.iterdir()}
        assert pngs <= set(results["files"])
    assert not [p for p in output.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_plots_are_skipped_with_a_log_line_without_matplotlib(tiny, tmp_path, caplog):
    with mock.patch.object(report, "_matplotlib_available", return_value=False), caplog.at_level(logging.WARNING):
        results = predict_properties(
            PredictConfig(
                model=str(tiny["model"]),
                dataset=str(tiny["dataset"]),
                output_dir=str(tmp_path),
                properties=["test_acc"],
                poolings=["mean"],
                baselines=False,
                checkpoint_epochs=[1, 2],
            )
        )
    assert "matplotlib is not installed" in caplog.text
    assert results["files"] == ["results.json", "results.md"]
    assert {r["method"] for r in results["records"]} == {"SANE mean", "SANE mean + gradient boosting"}
    assert not list(tmp_path.glob("*.png"))
    # The epochs filter keeps only checkpoints of epochs 1 and 2: 2 per model.
    assert sum(results["dataset"]["num_checkpoints"].values()) == 2 * 12


def test_shipped_yaml_parses():
    (config,) = parse_config(
        (PredictConfig,), ["--config", str(REPO / "scripts/configs/predict_digits_cnn.yaml"), "--finetune_epochs", "3"]
    )
    assert config.finetune_epochs == 3 and "test_acc" in config.properties and config.poolings[0] == "mean"


def test_bad_inputs(tiny, tmp_path):
    def run(**overrides):
        values = dict(model=str(tiny["model"]), dataset=str(tiny["dataset"]), output_dir=str(tmp_path / "out"))
        values.update(overrides)
        return predict_properties(PredictConfig(**values))

    with pytest.raises(FileNotFoundError, match="--model .*missing_sane: no such SANE model folder"):
        run(model=str(tmp_path / "missing_sane"))
    with pytest.raises(FileNotFoundError, match="--dataset .*missing_zoo: no such tokenized zoo dataset folder"):
        run(dataset=str(tmp_path / "missing_zoo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run(model=str(tmp_path / "empty"))
    token_size = tiny["zoo"].layout.token_size
    _save_sane(tiny["zoo"], tmp_path / "wrong_sane", token_size=token_size + 3)
    with pytest.raises(ValueError, match=f"token_size {token_size + 3}.*token_size {token_size}"):
        run(model=str(tmp_path / "wrong_sane"))
    with pytest.raises(ValueError, match=r"Unknown property \['accuracy'\]; this zoo has \['epoch', 'test_acc'"):
        run(properties=["accuracy"])
    with pytest.raises(ValueError, match="`poolings` must be among"):
        PredictConfig(model="m", dataset="d", poolings=["max"])
    with pytest.raises(ValueError, match="`model` is required"):
        PredictConfig(dataset="d")
    assert not (tmp_path / "out").exists()  # nothing written on errors


def test_tokens_are_renormalized_for_a_sane_trained_with_other_statistics(tiny, tmp_path):
    zoo = tiny["zoo"]
    assert token_transform_for(load_sane_processor(tiny["model"]), zoo) is None
    other = TokenNormalization.from_dict(zoo.normalization.to_dict())
    other = TokenNormalization(other.layer_names, [m + 1.0 for m in other.mean], [2 * s for s in other.std])
    _save_sane(zoo, tmp_path / "other_sane", normalization=other.to_dict())
    transform = token_transform_for(load_sane_processor(tmp_path / "other_sane"), zoo)
    tokens = zoo.splits["train"][0:3]["tokens"]
    raw = zoo.normalization.denormalize(tokens, zoo.layout)
    torch.testing.assert_close(transform(tokens), other.normalize(raw, zoo.layout), rtol=1e-5, atol=1e-5)


def test_finetuning_learns_and_restores_the_best_epoch(tiny):
    zoo = tiny["zoo"]
    backbone = SaneModel.from_pretrained(tiny["model"])
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = finetune_property_predictor(
        backbone, zoo.splits, zoo.layout, ["test_acc", "epoch"], epochs=6, batch_size=8, lr=1e-3, patience=10
    )
    history = result["history"]
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]
    best = min(range(6), key=lambda i: history[i]["val_loss"]) + 1
    assert result["best_epoch"] == best
    assert set(result["scores"]) == {"test_acc", "epoch"}
    assert result["scores"]["epoch"]["train"] > 0.0
    # The backbone passed in is left untouched (the model is fine-tuned on a copy).
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_prediction_over_two_processes_writes_the_results_of_one(tiny, once_and_on_two_processes, folder_digests):
    """`scripts/predict_properties.py` under torchrun (2 CPU processes): each embeds its share of the batches (5 rows
    per batch: the splits' batches are shared out unevenly), the permutation-averaged embeddings draw the
    permutations one process draws, and the main process writes the results.json (without wall times) and the
    plots of one process."""
    config = (
        f"model: {tiny['model']}\ndataset: {tiny['dataset']}\nproperties: [test_acc, optimizer]\n"
        "embed_batch_size: 5\nembed_permutations: 2\ngradient_boosting: false\nupdate_model_card: false\n"
        "num_threads: 1\n"
    )
    one, two, _ = once_and_on_two_processes("scripts/predict_properties.py", config, main_predict)
    digests = folder_digests(one, skip=("results.md",))
    assert "results.json" in digests and len(digests) > 1 + int(report._matplotlib_available())
    assert folder_digests(two, skip=("results.md",)) == digests
    results = json.loads((one / "results.json").read_text())
    assert {"SANE mean", "SANE mean (perm-avg)"} <= {record["method"] for record in results["records"]}
