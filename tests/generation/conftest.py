"""Tiny offline fixtures for the generation tests: synthetic zoos on disk, their tokenized datasets, tiny SANEs.

The zoos are written directly in `sane_hf`'s zoo format (no training): `cnn_s` members on 8x8 digits inputs whose
activation and dropout vary between members (so decoded samples must be rebuilt with their anchor's arguments, and
Dropout modules shift the state_dict keys), and narrow BatchNorm `resnet18` members. A SANE is pretrained on each for
a few dozen steps with 1 torch thread.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.models.sane import SaneModel
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import pretrain
from sane_hf.zoo_models import build_zoo_model


CNN_KWARGS = {"input_size": 8, "padding": "auto", "in_channels": 1}
RESNET_KWARGS = {"in_channels": 1, "width": 4, "num_classes": 10}
DIGITS_TASK = {"name": "digits", "seed": 0}


def _member_kwargs(architecture: str, index: int) -> dict:
    if architecture == "cnn_s":
        # Activation and dropout vary as generating factors: dropout > 0 adds Dropout modules (key indices shift).
        return {**CNN_KWARGS, "activation": ("relu", "tanh")[index % 2], "dropout": 0.1 * ((index // 2) % 2)}
    return dict(RESNET_KWARGS)


def write_zoo(root: Path, architecture: str, num_models: int, num_epochs: int) -> Path:
    """A zoo in `sane_hf`'s own format: random members drifting with the epoch, consistent made-up metrics."""
    root.mkdir(parents=True)
    config = {"format": "sane_hf-zoo", "format_version": 1, "task": DIGITS_TASK, "architecture": architecture}
    (root / "zoo_config.json").write_text(json.dumps(config))
    for index in range(num_models):
        model_id = f"model_{index:04d}"
        folder = root / "models" / model_id
        (folder / "checkpoints").mkdir(parents=True)
        kwargs = _member_kwargs(architecture, index)
        params = {
            "model_id": model_id,
            "index": index,
            "architecture": architecture,
            "model_kwargs": kwargs,
            "task": "digits",
            "seed": index,
            "lr": 0.01,
            "optimizer": "adam",
            "epochs": num_epochs,
            **{k: kwargs[k] for k in ("activation", "dropout") if k in kwargs},
        }
        (folder / "params.json").write_text(json.dumps(params))
        torch.manual_seed(index)
        base = build_zoo_model(architecture, **kwargs).state_dict()
        lines = []
        for epoch in range(num_epochs + 1):
            g = torch.Generator().manual_seed(1000 * index + epoch)
            state = {
                k: (v + 0.05 * epoch * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
                for k, v in base.items()
            }
            save_file(
                {k: v.contiguous() for k, v in state.items()},
                str(folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"),
            )
            acc = round(0.1 + 0.05 * epoch + 0.01 * index, 6)
            lines.append(json.dumps({"epoch": epoch, "train_acc": acc, "val_acc": acc, "test_acc": acc, "ggap": 0.0}))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "DONE").write_text("{}")
    return root


def _make(tmp_path_factory, architecture: str, num_models: int, num_epochs: int, token_size: int, **pretrain_kwargs):
    root = tmp_path_factory.mktemp(f"generation_{architecture}")
    zoo_dir = write_zoo(root / "zoo", architecture, num_models, num_epochs)
    dataset_dir = root / "zoo_ds"
    convert_zoo(
        ConvertConfig(zoo_dir=str(zoo_dir), output_dir=str(dataset_dir), token_size=token_size, seed=0),
        show_progress=False,
    )
    values = dict(
        dataset=str(dataset_dir),
        output_dir=str(root / "sane"),
        d_model=32,
        n_heads=2,
        n_layers=1,
        latent_dim=8,
        batch_size=8,
        lr=1e-2,
        seed=3,
        logging_steps=50,
        num_threads=1,
    )
    values.update(pretrain_kwargs)
    sane_dir = pretrain(PretrainConfig(**values))
    return {"root": root, "dataset": dataset_dir, "sane": sane_dir}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cnn_setup(tmp_path_factory):
    """A `cnn_s` zoo (12 models x 4 checkpoints), its dataset (T=64: 66 tokens) and a SANE pretrained 60 steps."""
    paths = _make(tmp_path_factory, "cnn_s", 12, 3, 64, window_size=128, epochs=100, max_steps=60)
    return {**paths, "zoo": load_zoo_dataset(paths["dataset"]), "model": SaneModel.from_pretrained(paths["sane"])}


@pytest.fixture(scope="session")
def resnet_setup(tmp_path_factory):
    """A narrow BatchNorm `resnet18` zoo (6 models x 2 checkpoints) and a SANE pretrained a few steps."""
    paths = _make(
        tmp_path_factory,
        "resnet18",
        6,
        1,
        64,
        window_size=32,
        halo_size=8,
        epochs=10,
        max_steps=5,
        batch_size=4,
        permutation_augmentation=False,
    )
    return {**paths, "zoo": load_zoo_dataset(paths["dataset"]), "model": SaneModel.from_pretrained(paths["sane"])}


@pytest.fixture(scope="session")
def always_predicts():
    """`always_predicts(label, margin=1.0)`: a `cnn_s` (8x8 digits) with every weight zero but its classifier bias, so
    that whatever the image its logits favour `label`: a network of known accuracy."""

    def build(label: int, margin: float = 1.0) -> torch.nn.Module:
        model = build_zoo_model("cnn_s", **CNN_KWARGS)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
            classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            classifier.bias[label] = margin
        return model.eval()

    return build


@pytest.fixture(scope="session")
def share_of():
    """`share_of(label, task, split)`: the accuracy of always answering `label`, counted directly on the labels."""
    return lambda label, task, split: (task.split(split).labels == label).double().mean().item()
