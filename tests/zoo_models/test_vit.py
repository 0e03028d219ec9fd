"""The transformer zoo architecture `ViTClassifier` ("vit"): a transformers ViT with the zoo interface, saved as a
standard transformers folder (docs/architecture.md#transformer-zoos)."""

import json

import pytest
import torch
from transformers import AutoModelForImageClassification, ViTForImageClassification

from sane_hf.zoo_models import ViTClassifier, build_zoo_model, load_zoo_model


KWARGS = {
    "in_channels": 1,
    "input_size": 8,
    "num_classes": 7,
    "patch_size": 2,
    "hidden_size": 12,
    "num_layers": 1,
    "num_heads": 3,
    "intermediate_size": 10,
    "activation": "tanh",
    "dropout": 0.1,
    "init": "xavier_uniform",
    "bias_init": 0.0,
}


def test_the_zoo_arguments_become_the_vit_config_and_logits_come_back():
    torch.manual_seed(0)
    model = build_zoo_model("vit", **KWARGS).eval()
    config = model.model.config
    assert (config.image_size, config.patch_size, config.num_channels, config.num_labels) == (8, 2, 1, 7)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (12, 1, 3)
    assert (config.intermediate_size, config.hidden_act, config.hidden_dropout_prob) == (10, "tanh", 0.1)
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(images), model.model(pixel_values=images).logits)
    # `init` re-initialized every Linear/Conv2d: biases are the constant bias_init (transformers' own init: zeros
    # for biases too, so check a weight's spread instead: xavier_uniform of a [12, 12] weight has std 1/sqrt(12)).
    weight = model.model.vit.layers[0].attention.q_proj.weight
    assert abs(weight.std().item() - (1 / 12) ** 0.5) < 0.08 and weight.abs().max() <= (6 / 24) ** 0.5


def test_saved_as_a_transformers_folder_that_both_loaders_read(tmp_path):
    torch.manual_seed(1)
    model = build_zoo_model("vit", **KWARGS).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTForImageClassification"]
    assert config["zoo_architecture"] == "vit" and config["sane_zoo_kwargs"] == {**KWARGS}
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(images)
        zoo = load_zoo_model(tmp_path)
        assert type(zoo) is ViTClassifier and not zoo.training
        assert torch.equal(zoo(images), expected)
        auto = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        assert type(auto) is ViTForImageClassification
        assert torch.equal(auto(pixel_values=images).logits, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 3}, r"`patch_size`=3 must divide `input_size`=8"),
        ({"num_heads": 3}, r"`num_heads`=3 must divide `hidden_size`=16"),
        ({"activation": "swish"}, r"`activation` must be one of"),
    ],
)
def test_bad_arguments_name_the_value_and_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTClassifier(**kwargs)


def test_a_folder_without_zoo_arguments_is_refused_with_the_reason(tmp_path):
    ViTForImageClassification(
        build_zoo_model("vit").model.config.__class__(image_size=8, num_channels=1)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'sane_zoo_kwargs' entry"):
        ViTClassifier.from_pretrained(tmp_path)
