"""The SANE pipeline end to end on a zoo of transformers (quickstart preset `vit_smoke`, run once by the `hub_artifacts`
fixture): a ViT zoo built by `make_zoo`, converted canonicalized, pretrained with permutation augmentation, probed
against W and s(W), and generated models evaluated against scratch, anchors and the noise control
(docs/architecture.md#transformer-zoos). Loading the pushed generated ViTs by repo id without `sane_hf` is
tests/hub/test_hub_integration.py."""

import json

import torch
from safetensors.torch import load_file

from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.quickstart import PRESETS
from sane_hf.tasks import load_task
from sane_hf.zoo_models import build_zoo_model, load_zoo_model


def _read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_vit_zoo_holds_transformers_members_with_their_properties(hub_artifacts):
    zoo = hub_artifacts.vit_dir / "zoo"
    members = sorted((zoo / "models").iterdir())
    assert len(members) == PRESETS["vit_smoke"]["zoo"]["num_models"]
    assert {_read_json(m / "params.json")["architecture"] for m in members} == {"vit"}
    # Every member is a ViT whose final checkpoint reproduces the test accuracy recorded for it.
    task = load_task("digits")
    for member in members[:3]:
        kwargs = _read_json(member / "params.json")["model_kwargs"]
        model = build_zoo_model("vit", **kwargs)
        assert type(model.model).__name__ == "ViTForImageClassification"
        final = sorted((member / "checkpoints").iterdir())[-1]
        model.load_state_dict(load_file(final))
        with torch.no_grad():
            accuracy = (model.eval()(task.test.images).argmax(1) == task.test.labels).float().mean().item()
        assert abs(accuracy - _read_json(member / "DONE")["final_metrics"]["test_acc"]) < 1e-6


def test_conversion_canonicalizes_without_changing_what_the_members_compute(hub_artifacts):
    """Canonicalized weights are a permutation symmetry of the zoo's: the same logits, different weights."""
    zoo = load_zoo_dataset(hub_artifacts.vit_dir / "zoo_ds")
    assert zoo.info.architecture == "vit" and zoo.info.canonicalized
    images = load_task("digits").test.images[:64]
    moved = 0
    for row in zoo.splits["train"]:
        member = hub_artifacts.vit_dir / "zoo" / "models" / row["model_id"]
        original = load_file(member / "checkpoints" / f"epoch_{row['epoch']:04d}.safetensors")
        stored = zoo.layout.detokenize(zoo.normalization.denormalize(torch.as_tensor(row["tokens"]), zoo.layout))
        kwargs = _read_json(member / "params.json")["model_kwargs"]
        models = [build_zoo_model("vit", **kwargs).eval() for _ in range(2)]
        models[0].load_state_dict(original)
        models[1].load_state_dict({k: stored[k].reshape(v.shape) for k, v in original.items()})
        with torch.no_grad():
            torch.testing.assert_close(models[1](images), models[0](images), rtol=0, atol=1e-5)
        moved += any(not torch.allclose(stored[k].reshape(v.shape), v, atol=1e-4) for k, v in original.items())
    assert moved > 0  # some member was permuted onto the reference


def test_pretraining_permutes_probing_compares_and_generation_is_evaluated(hub_artifacts):
    root = hub_artifacts.vit_dir
    train_config = _read_json(root / "sane" / "train_config.json")
    assert train_config["permutation_augmentation"] is True
    assert _read_json(root / "sane" / "trainer_state.json")["optimizer_steps"] >= 1
    records = _read_json(root / "predict" / "results.json")["records"]
    methods = {(r["property"], r["method"]) for r in records}
    assert {("test_acc", "W"), ("test_acc", "s(W)"), ("test_acc", "SANE mean")} <= methods
    populations = _read_json(root / "generated" / "evaluation.json")["populations"]
    assert {"generated", "anchors", "scratch", "noise_control"} <= set(populations)
    generated = sorted((root / "generated").glob("model_*"))
    assert len(generated) == PRESETS["vit_smoke"]["generate"]["n"]
    for folder in generated:
        config = _read_json(folder / "config.json")
        assert config["model_type"] == "vit" and config["zoo_architecture"] == "vit"
        assert type(load_zoo_model(folder).model).__name__ == "ViTForImageClassification"
    assert "a zoo of `vit` networks" in (root / "REPORT.md").read_text(encoding="utf-8")
