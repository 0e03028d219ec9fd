"""Tests of `sane_hf.zoo_models`: registry, architectures, exact parameter counts and Hub round trips (offline)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from sane_hf.zoo_models import (
    CNN3,
    INITS,
    MLP,
    ZOO_ARCHITECTURE_KEY,
    CNNSmall,
    ResNet,
    ResNet18,
    ResNet34,
    ZooModel,
    build_zoo_model,
    get_zoo_architecture,
    list_zoo_architectures,
    load_zoo_model,
    register_zoo_model,
    zoo_params_to_kwargs,
)
from sane_hf.zoo_models import registry as zoo_registry


ARCHITECTURES = list_zoo_architectures()

# One small configuration per registered architecture and the per-sample input shape it expects.
SMALL_CONFIGS: dict[str, tuple[dict, tuple[int, ...]]] = {
    "cnn_s": ({}, (1, 28, 28)),
    "cnn3": ({}, (3, 32, 32)),
    "resnet18": ({"width": 8}, (3, 32, 32)),
    "resnet34": ({"width": 4}, (3, 16, 16)),
    "mlp": ({}, (1, 8, 8)),
    "vit": ({"hidden_size": 8, "intermediate_size": 12}, (1, 8, 8)),
}
# Non-default values everywhere, so the round trip fails if `config.json` misses an argument.
ROUND_TRIP_CONFIGS: dict[str, tuple[dict, tuple[int, ...]]] = {
    "cnn_s": (
        {
            "input_size": 8,
            "padding": "auto",
            "num_classes": 7,
            "activation": "tanh",
            "dropout": 0.25,
            "init": "kaiming_normal",
            "bias_init": 0.0,
        },
        (1, 8, 8),
    ),
    "cnn3": (
        {
            "in_channels": 1,
            "input_size": 8,
            "padding": "auto",
            "activation": "leakyrelu",
            "dropout": 0.1,
            "init": "xavier_uniform",
        },
        (1, 8, 8),
    ),
    "resnet18": ({"width": 8, "num_classes": 100, "stem": "imagenet", "init": "kaiming_uniform"}, (3, 32, 32)),
    "resnet34": ({"width": 4, "in_channels": 1, "zero_init_residual": True}, (1, 16, 16)),
    "mlp": (
        {
            "in_features": 12,
            "hidden_sizes": [16, 8, 4],
            "num_classes": 3,
            "activation": "silu",
            "dropout": 0.5,
            "init": "uniform",
        },
        (12,),
    ),
}


def _json_roundtrip(value):
    return json.loads(json.dumps(value))


def _assert_same_state_dict(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)  # same keys in the same order (SANE tokenizes in state_dict order)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


def _count_sane_tokens(state_dict: dict[str, torch.Tensor], token_size: int, ignore_bn: bool = False):
    """Tokens per tokenized layer following docs/method.md#tokenization (shapes only; not the package tokenizer)."""
    counts = []
    for key, tensor in state_dict.items():
        is_bn = "bn" in key or "downsample.1" in key
        if (ignore_bn and is_bn) or not any(part in key for part in ("weight", "running_mean", "running_var")):
            continue
        row_width = math.prod(tensor.shape[1:])
        if "weight" in key and key.replace("weight", "bias") in state_dict:
            row_width += 1
        counts.append(tensor.shape[0] * math.ceil(row_width / token_size))
    return counts


def _torchvision_resnet_keys(layers: list[int]) -> list[str]:
    """state_dict keys of torchvision's BasicBlock ResNet, in order, written out from its module layout."""

    def bn(prefix: str) -> list[str]:
        return [
            f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]

    keys = ["conv1.weight", *bn("bn1")]
    for stage, num_blocks in enumerate(layers, start=1):
        for block in range(num_blocks):
            prefix = f"layer{stage}.{block}"
            keys += [f"{prefix}.conv1.weight", *bn(f"{prefix}.bn1"), f"{prefix}.conv2.weight", *bn(f"{prefix}.bn2")]
            if block == 0 and stage > 1:
                keys += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    # These models are tiny: intra-op threads only add contention on small shared CPUs (2-4x slower here).
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def resnet18_cifar100() -> ResNet18:
    # The SANE ResNet-18 zoo architecture at full size (docs/method.md, docs/method.md#tokenization), built once for several tests.
    return ResNet18(num_classes=100)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


def test_registry_lists_the_zoo_architectures():
    assert ARCHITECTURES == sorted(ARCHITECTURES)
    assert set(ARCHITECTURES) >= {"cnn_s", "cnn3", "resnet18", "resnet34", "mlp"}
    # Every registered architecture must get a small test configuration below.
    assert set(ARCHITECTURES) == set(SMALL_CONFIGS) == set(ROUND_TRIP_CONFIGS) | {"vit"}
    assert get_zoo_architecture("cnn_s") is CNNSmall
    assert get_zoo_architecture("cnn3") is CNN3
    assert get_zoo_architecture("resnet18") is ResNet18
    assert get_zoo_architecture("resnet34") is ResNet34
    assert get_zoo_architecture("mlp") is MLP


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_class_metadata(name):
    cls = get_zoo_architecture(name)
    assert cls.zoo_name == name
    assert issubclass(cls, nn.Module) and issubclass(cls, PyTorchModelHubMixin)
    card_data = cls._hub_mixin_info.model_card_data
    # The ViT is saved as a standard transformers folder (tests/zoo_models/test_vit.py).
    assert card_data.library_name == ("transformers" if name == "vit" else "sane_hf")
    assert {"sane", "sane-zoo-model"} <= set(card_data.tags)
    assert cls._hub_mixin_info.paper_url == "https://arxiv.org/abs/2406.09997"
    assert cls._hub_mixin_info.repo_url is not None
    # Every constructor argument has a JSON default, so `Cls()` and `Cls.from_pretrained(dir)` always work.
    params = {k: p for k, p in cls._hub_mixin_init_parameters.items() if k != "self"}
    assert set(params) == set(cls._hub_mixin_jsonable_default_values)


def test_unknown_architecture_lists_known_names():
    with pytest.raises(ValueError, match=r"Unknown zoo architecture 'nope'\. Known architectures: cnn3, cnn_s, mlp"):
        get_zoo_architecture("nope")
    with pytest.raises(ValueError, match=r"Unknown zoo architecture 'gpt2'"):
        build_zoo_model("gpt2")


def test_build_zoo_model_rejects_unknown_arguments():
    with pytest.raises(TypeError, match=r"'cnn3' \(CNN3\) got unexpected arguments \['depth'\]; it accepts \["):
        build_zoo_model("cnn3", depth=3)
    model = build_zoo_model("cnn3", num_classes=5)
    assert isinstance(model, CNN3) and model.num_classes == 5


def test_register_zoo_model(monkeypatch):
    # Work on a copy so the test's registrations do not leak into other tests.
    monkeypatch.setattr(zoo_registry, "_ZOO_MODEL_REGISTRY", dict(zoo_registry._ZOO_MODEL_REGISTRY))

    @register_zoo_model("tiny_linear")
    class TinyLinear(ZooModel, tags=["tiny"]):
        def __init__(self, *, in_features: int = 4, num_classes: int = 2) -> None:
            super().__init__()
            self.num_classes = num_classes
            self.linear = nn.Linear(in_features, num_classes)

        def forward(self, inputs):
            return self.linear(inputs.flatten(1))

    assert "tiny_linear" in list_zoo_architectures()
    assert TinyLinear.zoo_name == "tiny_linear"
    assert {"sane", "sane-zoo-model", "tiny"} <= set(TinyLinear._hub_mixin_info.model_card_data.tags)
    assert build_zoo_model("tiny_linear", num_classes=3)(torch.randn(2, 4)).shape == (2, 3)

    with pytest.raises(ValueError, match=r"'cnn3' is already registered to sane_hf\.zoo_models\.cnn\.CNN3"):
        register_zoo_model("cnn3")(TinyLinear)
    with pytest.raises(TypeError, match=r"expects a subclass of ZooModel"):
        register_zoo_model("plain")(nn.Linear)
    with pytest.raises(ValueError, match=r"`name` must be a non-empty string, got ''"):
        register_zoo_model("")


def test_unregistered_subclass_does_not_inherit_zoo_name(tmp_path):
    class WiderHeadCNN3(CNN3):
        pass

    assert CNN3.zoo_name == "cnn3" and WiderHeadCNN3.zoo_name is None
    WiderHeadCNN3().save_pretrained(tmp_path)
    assert ZOO_ARCHITECTURE_KEY not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize(
    ("params", "expected_name", "expected_kwargs"),
    [
        (
            {
                "model::type": "CNN3",
                "model::channels_in": 3,
                "model::nlin": "leakyrelu",
                "model::dropout": 0.5,
                "model::init_type": "kaiming_uniform",
                "model::o_dim": 10,
                "optim::lr": 1e-3,
            },
            "cnn3",
            {"in_channels": 3, "activation": "leakyrelu", "dropout": 0.5, "init": "kaiming_uniform"},
        ),
        (
            {
                "model::type": "CNN",
                "model::channels_in": 1,
                "model::nlin": "tanh",
                "model::dropout": 0.0,
                "model::init_type": "uniform",
            },
            "cnn_s",
            {"in_channels": 1, "activation": "tanh", "dropout": 0.0, "init": "uniform"},
        ),
        (
            {
                "model::type": "Resnet18",
                "model::channels_in": 3,
                "model::o_dim": 100,
                "model::nlin": "relu",
                "model::dropout": 0.2,
                "model::init_type": "kaiming_uniform",
            },
            "resnet18",
            {"in_channels": 3, "num_classes": 100, "init": "kaiming_uniform"},
        ),
        (
            {
                "model::type": "MLP",
                "model::i_dim": 14,
                "model::h_dim": 30,
                "model::o_dim": 3,
                "model::nlin": "gelu",
                "model::dropout": 0.1,
                "model::init_type": None,
                "model::use_bias": True,
            },
            "mlp",
            {
                "in_features": 14,
                "hidden_sizes": [30],
                "num_classes": 3,
                "activation": "gelu",
                "dropout": 0.1,
                "init": "default",
            },
        ),
    ],
)
def test_zoo_params_to_kwargs(params, expected_name, expected_kwargs):
    name, kwargs = zoo_params_to_kwargs(params)
    assert (name, kwargs) == (expected_name, expected_kwargs)
    if name != "resnet18":  # building the full-size ResNet is covered elsewhere
        assert isinstance(build_zoo_model(name, **kwargs), get_zoo_architecture(name))


def test_zoo_params_to_kwargs_errors():
    with pytest.raises(ValueError, match=r"`model::type` must be one of \['CNN', 'CNN3', 'MLP', .*got 'ViT'"):
        zoo_params_to_kwargs({"model::type": "ViT"})
    with pytest.raises(ValueError, match=r"`model::nlin` is missing, and 'CNN3' needs it"):
        zoo_params_to_kwargs({"model::type": "CNN3", "model::channels_in": 3, "model::dropout": 0.0})
    with pytest.raises(ValueError, match=r"MLPs without bias"):
        zoo_params_to_kwargs({"model::type": "MLP", "model::use_bias": False})


# --------------------------------------------------------------------------------------------------------------
# Forward passes and architectures
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_shape(name):
    kwargs, input_shape = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    model = build_zoo_model(name, **kwargs)
    logits = model(torch.randn(4, *input_shape))
    assert logits.shape == (4, model.num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("cnn_s", {}, 2_464),  # the paper's zoo appendix, 28x28x1
        ("cnn_s", {"in_channels": 3}, 2_864),  # the paper's zoo appendix, 3-channel variant
        ("cnn_s", {"input_size": 8, "padding": "auto"}, 2_464),  # digits: flatten is 4*3*3 = 36 again
        ("cnn3", {}, 10_853),  # docs/method.md, 32x32x3
        ("cnn3", {"padding": "auto"}, 10_853),  # "auto" keeps the paper architecture when it fits
        ("mlp", {}, 3_466),  # 64*32+32 + 32*32+32 + 32*10+10
    ],
)
def test_parameter_counts_small(name, kwargs, expected):
    assert build_zoo_model(name, **kwargs).num_parameters() == expected


def test_parameter_counts_resnet(resnet18_cifar100):
    assert resnet18_cifar100.num_parameters() == 11_220_132  # the paper's zoo appendix, CIFAR stem, 100 classes
    assert ResNet18().num_parameters() == 11_173_962  # the paper's zoo appendix, 10 classes
    # torchvision's resnet18 / resnet34 (ImageNet stem, 1000 classes) have 11,689,512 / 21,797,672 parameters.
    assert ResNet18(stem="imagenet", num_classes=1000).num_parameters() == 11_689_512
    assert ResNet34(stem="imagenet", num_classes=1000).num_parameters() == 21_797_672


def test_cnn3_state_dict_keys():
    expected = [f"module_list.{i}.{p}" for i in (0, 4, 8, 13, 16) for p in ("weight", "bias")]
    for dropout in (0.0, 0.5):
        state_dict = CNN3(dropout=dropout).state_dict()
        assert list(state_dict) == expected
    shapes = {key: tuple(tensor.shape) for key, tensor in CNN3().state_dict().items()}
    assert shapes["module_list.0.weight"] == (16, 3, 3, 3)
    assert shapes["module_list.8.weight"] == (15, 32, 3, 3)
    assert shapes["module_list.13.weight"] == (20, 60)
    assert shapes["module_list.16.weight"] == (10, 20)


def test_cnn_small_state_dict_keys_follow_upstream_dropout_layout():
    # Upstream `CNN` only inserts Dropout modules for dropout > 0, which shifts the indices.
    without = [f"module_list.{i}.{p}" for i in (0, 3, 6, 9, 11) for p in ("weight", "bias")]
    with_dropout = [f"module_list.{i}.{p}" for i in (0, 4, 8, 11, 14) for p in ("weight", "bias")]
    assert list(CNNSmall().state_dict()) == without
    assert list(CNNSmall(dropout=0.5).state_dict()) == with_dropout


@pytest.mark.parametrize("cls", [ResNet18, ResNet34])
def test_resnet_state_dict_matches_torchvision_layout(cls):
    model = cls(width=8, num_classes=7)
    layers = [2, 2, 2, 2] if cls is ResNet18 else [3, 4, 6, 3]
    assert model.layers == layers
    state_dict = model.state_dict()
    assert list(state_dict) == _torchvision_resnet_keys(layers)
    assert state_dict["conv1.weight"].shape == (8, 3, 3, 3)
    assert state_dict["layer2.0.downsample.0.weight"].shape == (16, 8, 1, 1)
    assert state_dict["layer4.0.conv1.weight"].shape == (64, 32, 3, 3)
    assert state_dict["fc.weight"].shape == (7, 64)
    assert "layer1.0.downsample.0.weight" not in state_dict  # stride 1 and same width: identity shortcut
    imagenet = cls(width=8, num_classes=7, stem="imagenet")
    assert list(imagenet.state_dict()) == list(state_dict)
    assert imagenet.state_dict()["conv1.weight"].shape == (8, 3, 7, 7)


def test_sane_token_counts_of_the_paper_zoos(resnet18_cifar100):
    # Cross-check of the layer shapes against the token counts in docs/method.md#tokenization.
    cnn3_tokens = _count_sane_tokens(CNN3().state_dict(), token_size=289)
    assert cnn3_tokens == [16, 32, 15, 20, 10] and sum(cnn3_tokens) == 93
    resnet_tokens = _count_sane_tokens(resnet18_cifar100.state_dict(), token_size=288)
    assert len(resnet_tokens) == 81 and sum(resnet_tokens) == 53_704
    resnet_tokens_no_bn = _count_sane_tokens(resnet18_cifar100.state_dict(), token_size=288, ignore_bn=True)
    assert len(resnet_tokens_no_bn) == 21 and sum(resnet_tokens_no_bn) == 39_304
    # 10 classes: the fc layer has 90 rows fewer, two tokens each.
    assert sum(resnet_tokens_no_bn) - 90 * 2 == 39_124


def test_cnns_run_on_digits_sized_inputs():
    digits = torch.rand(5, 1, 8, 8)  # scikit-learn digits: 8x8, one channel
    small = CNNSmall(input_size=8, padding="auto")
    assert small.paddings == (2, 2, 1) and small.feature_size == 36
    assert small(digits).shape == (5, 10)
    cnn3 = CNN3(in_channels=1, input_size=8, padding="auto")
    assert cnn3.paddings == (1, 1, 1) and cnn3.feature_size == 15
    assert cnn3(digits).shape == (5, 10)
    assert CNN3(padding=1).feature_size == 15 * 4 * 4
    with pytest.raises(ValueError, match=r"CNNSmall: `input_size`=8 is too small"):
        CNNSmall(input_size=8)
    with pytest.raises(ValueError, match=r"CNN3: `input_size`=8 is too small .* padding='auto' is 8\."):
        CNN3(in_channels=1, input_size=8, padding=0)


def test_forward_rejects_wrong_input_shapes():
    with pytest.raises(ValueError, match=r"CNN3 expects input of shape \[batch, 3, 32, 32\], got \[2, 1, 32, 32\]"):
        CNN3()(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"CNNSmall expects input of shape \[batch, 1, 28, 28\], got \[2, 1, 8, 8\]"):
        CNNSmall()(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"ResNet18 expects input of shape \[batch, 3, height, width\]"):
        ResNet18(width=4)(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"MLP expects input of shape \[batch, \.\.\.\] with 64 features"):
        MLP()(torch.randn(2, 63))


@pytest.mark.parametrize("init", [init for init in INITS if init != "default"])
def test_init_schemes(init):
    torch.manual_seed(0)
    model = CNN3(init=init, bias_init=0.5)
    torch.manual_seed(0)
    again = CNN3(init=init, bias_init=0.5)
    _assert_same_state_dict(model.state_dict(), again.state_dict())  # seeded through the global RNG
    for key, tensor in model.state_dict().items():
        if key.endswith("bias"):
            assert torch.all(tensor == 0.5), key
    if init == "uniform":  # torch.nn.init.uniform_ with default arguments: U(0, 1), as the zoo generators
        weights = model.module_list[0].weight
        assert weights.min() >= 0 and weights.max() < 1
    resnet = ResNet18(width=4, init=init)
    assert torch.all(resnet.fc.bias == 0.01)
    assert torch.all(resnet.bn1.weight == 1) and torch.all(resnet.bn1.bias == 0)


def test_default_init_and_zero_init_residual():
    biases = CNN3().module_list[0].bias
    assert not torch.all(biases == biases[0])  # PyTorch's default init, not a constant
    resnet = ResNet18(width=4, zero_init_residual=True)
    assert all(torch.all(block.bn2.weight == 0) for block in resnet.layer1)
    assert torch.all(resnet.layer1[0].bn1.weight == 1)


def test_activation_names():
    model = CNN3(activation="leakyrelu")  # the zoos' `model::nlin` spelling
    assert model.activation == "leaky_relu"
    assert isinstance(model.module_list[2], nn.LeakyReLU)
    assert isinstance(MLP(activation="gelu").module_list[1], nn.GELU)


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (
            CNN3,
            {"activation": "swish"},
            "CNN3: `activation` must be one of ['relu', 'tanh', 'gelu', 'sigmoid', "
            "'leaky_relu', 'silu'], got 'swish'.",
        ),
        (CNNSmall, {"dropout": 1.0}, "CNNSmall: `dropout` must be a float in [0.0, 1.0), got 1.0."),
        (MLP, {"dropout": -0.1}, "MLP: `dropout` must be a float in [0.0, 1.0), got -0.1."),
        (CNN3, {"init": "orthogonal"}, "CNN3: `init` must be one of ['default', "),
        (CNN3, {"padding": "same"}, "CNN3: `padding` must be an int >= 0 or 'auto', got 'same'."),
        (CNNSmall, {"padding": -1}, "CNNSmall: `padding` must be an int >= 0 or 'auto', got -1."),
        (CNN3, {"input_size": 0}, "CNN3: `input_size` must be an int >= 1, got 0."),
        (CNN3, {"input_size": 32.0}, "CNN3: `input_size` must be an int >= 1, got 32.0."),
        (CNN3, {"input_size": [32, 32]}, "CNN3: `input_size` must be an int >= 1, got [32, 32]."),
        (CNNSmall, {"input_size": 3, "padding": "auto"}, "CNNSmall: `input_size`=3 is too small"),
        (CNN3, {"in_channels": 0}, "CNN3: `in_channels` must be an int >= 1, got 0."),
        (CNN3, {"num_classes": True}, "CNN3: `num_classes` must be an int >= 1, got True."),
        (CNN3, {"bias_init": float("nan")}, "CNN3: `bias_init` must be a finite float, got nan."),
        (
            MLP,
            {"hidden_sizes": [32, 0]},
            "MLP: `hidden_sizes` must be a list of any number of ints >= 1, got [32, 0].",
        ),
        (MLP, {"hidden_sizes": 32}, "MLP: `hidden_sizes` must be a list of any number of ints >= 1, got 32."),
        (MLP, {"in_features": 0}, "MLP: `in_features` must be an int >= 1, got 0."),
        (ResNet18, {"stem": "vit"}, "ResNet18: `stem` must be one of ['cifar', 'imagenet'], got 'vit'."),
        (ResNet34, {"width": 0}, "ResNet34: `width` must be an int >= 1, got 0."),
        (ResNet, {"layers": [2, 2, 2]}, "ResNet: `layers` must be a list of 4 ints >= 1, got [2, 2, 2]."),
        (ResNet18, {"zero_init_residual": "yes"}, "ResNet18: `zero_init_residual` must be a bool, got 'yes'."),
        (ResNet18, {"init": "zeros"}, "ResNet18: `init` must be one of ['default', "),
    ],
)
def test_constructor_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        cls(**kwargs)


def test_too_small_input_message_names_the_smallest_size():
    with pytest.raises(ValueError, match=r"smallest input_size that works with padding='auto' is 4\."):
        CNNSmall(input_size=3, padding="auto")
    with pytest.raises(ValueError, match=r"smallest input_size for padding=0 is 22\. .* padding='auto' is 8\."):
        CNN3(input_size=21)


# --------------------------------------------------------------------------------------------------------------
# Hub round trips (local directories; no network)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_CONFIGS))
def test_save_and_load_round_trip(name, tmp_path):
    kwargs, input_shape = ROUND_TRIP_CONFIGS[name]
    cls = get_zoo_architecture(name)
    torch.manual_seed(0)
    model = build_zoo_model(name, **kwargs)
    inputs = torch.randn(3, *input_shape)
    model.train()
    model(inputs)  # moves BatchNorm running statistics and num_batches_tracked away from their initial values
    model.eval()

    model.save_pretrained(tmp_path, model_card_kwargs={"description": "Generated by SANE (test)."})
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config[ZOO_ARCHITECTURE_KEY] == name
    assert {k: v for k, v in config.items() if k != ZOO_ARCHITECTURE_KEY} == model.zoo_config
    for key, value in kwargs.items():
        assert config[key] == _json_roundtrip(value), key

    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls and not loaded.training
    assert loaded.zoo_config == model.zoo_config
    _assert_same_state_dict(model.state_dict(), loaded.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))

    dispatched = load_zoo_model(tmp_path)
    assert type(dispatched) is cls
    _assert_same_state_dict(model.state_dict(), dispatched.state_dict())

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "sane_hf"
    assert {"sane", "sane-zoo-model"} <= set(card.data.tags)
    assert f"`{cls.__name__}`" in card.text and "Generated by SANE (test)." in card.text
    assert f"{model.num_parameters():,} parameters" in card.text


def test_generic_resnet_round_trip_and_dispatch_error(tmp_path):
    model = ResNet(layers=[1, 1, 1, 1], width=4)  # not registered: no "zoo_architecture" in config.json
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert ZOO_ARCHITECTURE_KEY not in config and config["layers"] == [1, 1, 1, 1]
    loaded = ResNet.from_pretrained(tmp_path)
    _assert_same_state_dict(model.state_dict(), loaded.state_dict())
    with pytest.raises(ValueError, match=r"has no 'zoo_architecture' entry"):
        load_zoo_model(tmp_path)


def test_from_pretrained_is_strict_by_default(tmp_path):
    MLP(hidden_sizes=[8]).save_pretrained(tmp_path)  # keys module_list.{0,2}
    # With dropout the last Linear moves to module_list.3: missing and unexpected keys, same shapes.
    with pytest.raises(RuntimeError, match=r"module_list\.3\.weight"):
        MLP.from_pretrained(tmp_path, dropout=0.5)
    # The mixin's lenient behaviour stays available on request.
    assert isinstance(MLP.from_pretrained(tmp_path, dropout=0.5, strict=False), MLP)


def test_push_to_hub_is_one_commit_with_weights_config_and_card(monkeypatch):
    uploads = []

    class FakeHfApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            uploads.append({"repo_id": repo_id, "files": {p.name: p.read_bytes() for p in folder.iterdir()}})
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", FakeHfApi)
    model = CNN3(input_size=8, in_channels=1, padding="auto")
    repo_id = "org/sane-generated-cnn3-kde-0001"
    model.push_to_hub(repo_id, model_card_kwargs={"description": "Sampled with KDE."})

    assert len(uploads) == 1 and uploads[0]["repo_id"] == repo_id
    files = uploads[0]["files"]
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    assert json.loads(files["config.json"])[ZOO_ARCHITECTURE_KEY] == "cnn3"
    readme = files["README.md"].decode()
    assert f'CNN3.from_pretrained("{repo_id}")' in readme and "Sampled with KDE." in readme
