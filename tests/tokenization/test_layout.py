"""TokenLayout: exact round trips on every architecture family, the original's token counts, and bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel

from sane_hf import TokenLayout
from sane_hf.zoo_models import build_zoo_model


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (BN statistics too), so a wrong mapping cannot hide behind zeros or ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(values.abs() + 0.1 if name.endswith("running_var") else values)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(123)
    return model


def _tiny_bert() -> nn.Module:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        type_vocab_size=2,
    )
    return BertModel(config)


def _tiny_gpt2() -> nn.Module:
    """GPT-2 with its Conv1D layers (weights `[in, out]`) and the LM head tied to the token embedding."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=12, n_embd=16, n_layer=2, n_head=2))


MODELS = {
    "cnn3": (lambda: build_zoo_model("cnn3"), 289),
    "resnet18": (lambda: build_zoo_model("resnet18", num_classes=100), 288),
    "mlp": (lambda: build_zoo_model("mlp", in_features=64, hidden_sizes=[32, 16], num_classes=10), 16),
    "bert": (_tiny_bert, 16),
    "gpt2": (_tiny_gpt2, 16),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_layout(request):
    factory, token_size = MODELS[request.param]
    model = _randomize(factory())
    return model, TokenLayout.from_module(model, token_size=token_size)


def _reference_tokens(state_dict, layout):
    """SANE §1.2-1.3 spelled out layer by layer (the slow, obvious way) to check the vectorized path against."""
    T = layout.token_size
    chunks = []
    for layer in layout.layers:
        weight = state_dict[layer.weight_key]
        rows = (weight.T if layer.transposed else weight).reshape(layer.num_rows, -1).float()
        if layer.bias_key is not None:
            rows = torch.cat([rows, state_dict[layer.bias_key].float()[:, None]], dim=1)
        rows = F.pad(rows, (0, layer.tokens_per_row * T - rows.shape[1]))
        chunks.append(rows.reshape(-1, T))
    return torch.cat(chunks)


def test_round_trip_is_bit_exact(model_and_layout):
    model, layout = model_and_layout
    state_dict = model.state_dict()
    tokens, mask, positions = layout.tokenize(state_dict)
    restored = layout.detokenize(tokens)
    assert list(restored) == list(state_dict)
    for key, value in state_dict.items():
        assert restored[key].dtype == value.dtype, key
        assert restored[key].shape == value.shape, key
        assert torch.equal(restored[key], value), key
    # the rebuilt state_dict loads strictly into the architecture
    model.load_state_dict(restored, strict=True)


def test_tokens_follow_the_sane_definition(model_and_layout):
    model, layout = model_and_layout
    tokens, mask, positions = layout.tokenize(model.state_dict())
    assert tokens.shape == (layout.num_tokens, layout.token_size)
    assert torch.equal(tokens, _reference_tokens(model.state_dict(), layout))
    assert mask.dtype == torch.bool and int(mask.sum()) == layout.num_values
    assert torch.all(tokens[~mask] == 0)
    assert positions.dtype == torch.long and positions.shape == (layout.num_tokens, 3)
    assert torch.equal(positions[:, 0], torch.arange(layout.num_tokens))
    for i, (layer, span) in enumerate(zip(layout.layers, layout.layer_token_slices())):
        assert torch.all(positions[span, 1] == i)
        expected_rows = torch.arange(layer.num_rows).repeat_interleave(layer.tokens_per_row)
        assert torch.equal(positions[span, 2], expected_rows)


def test_batched_and_list_inputs_match_single(model_and_layout):
    model, layout = model_and_layout
    state_dicts = [_randomize(model, seed).state_dict() for seed in (1, 2, 3)]
    state_dicts = [{k: v.clone() for k, v in sd.items()} for sd in state_dicts]
    singles = torch.stack([layout.tokenize(sd)[0] for sd in state_dicts])
    batched = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    tokens, mask, positions = layout.tokenize(batched)
    assert torch.equal(tokens, singles)
    assert mask.shape == tokens.shape and positions.shape == (3, layout.num_tokens, 3)
    assert torch.equal(layout.tokenize(state_dicts)[0], singles)
    restored = layout.detokenize(tokens)
    for key in batched:
        if layout._entry_by_key[key].tokenized:
            assert torch.equal(restored[key], batched[key]), key


def test_token_counts_match_the_original_cnn3():
    layout = TokenLayout.from_module(build_zoo_model("cnn3"), token_size=289)
    assert (layout.num_tokens, layout.num_layers) == (93, 5)
    assert [layer.row_width for layer in layout.layers] == [28, 145, 289, 61, 21]
    assert [layer.num_tokens for layer in layout.layers] == [16, 32, 15, 20, 10]
    assert layout.positions.max(0).values.tolist() == [92, 4, 31]


def test_token_counts_match_the_original_resnet18():
    model = build_zoo_model("resnet18", num_classes=100)
    layout = TokenLayout.from_module(model, token_size=288, tokenize_bn_stats=True)
    assert (layout.num_tokens, layout.num_layers) == (53_704, 81)
    assert layout.positions[:, 2].max() == 511
    # the original's ignore_bn=True (docs/method.md#tokenization)
    assert TokenLayout.from_module(model, token_size=288, ignore_bn=True).num_tokens == 39_304
    assert TokenLayout.from_module(build_zoo_model("resnet18"), token_size=288, ignore_bn=True).num_tokens == 39_124
    kinds = [layer.kind for layer in layout.layers]
    assert kinds.count("weight") == 21 and kinds.count("batchnorm") == 20
    assert kinds.count("running_mean") == kinds.count("running_var") == 20


def test_bn_stats_not_tokenized_are_restored_from_layout_or_reference():
    model = _randomize(build_zoo_model("resnet18", width=8))
    layout = TokenLayout.from_module(model, token_size=32, tokenize_bn_stats=False)
    assert not any(layer.kind.startswith("running") for layer in layout.layers)
    state_dict = model.state_dict()
    restored = layout.detokenize(layout.tokenize(state_dict)[0])
    for key, value in state_dict.items():
        assert torch.equal(restored[key], value), key
    other = {k: v + 1 if k.endswith("running_mean") else v for k, v in state_dict.items()}
    with_reference = layout.detokenize(layout.tokenize(state_dict)[0], reference=other)
    assert torch.equal(with_reference["bn1.running_mean"], state_dict["bn1.running_mean"] + 1)


def test_batchnorm_is_detected_by_type_or_structure_not_by_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bnorm_proj = nn.Linear(4, 3)  # contains "bn" but is no BatchNorm
            self.norm = nn.BatchNorm1d(3)  # a BatchNorm without "bn" in its name

    net = _randomize(Net())
    for layout in (TokenLayout.from_module(net, 8), TokenLayout.from_state_dict(net.state_dict(), 8)):
        kinds = {layer.name: layer.kind for layer in layout.layers}
        assert kinds == {
            "bnorm_proj.weight": "weight",
            "norm.weight": "batchnorm",
            "norm.running_mean": "running_mean",
            "norm.running_var": "running_var",
        }
    explicit = TokenLayout.from_state_dict(net.state_dict(), 8, batchnorm_modules=[])
    assert {layer.kind for layer in explicit.layers} == {"weight", "tensor"}


def test_any_float_parameter_is_tokenized_and_integer_buffers_restored():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.randn(()))  # 0-d
            self.gain = nn.Parameter(torch.randn(5))  # 1-d without a partner
            self.embedding = nn.Embedding(7, 3)
            self.ln = nn.LayerNorm(3)
            self.register_buffer("ids", torch.arange(6).view(2, 3))
            self.half = nn.Linear(3, 2).half()

    odd = _randomize(Odd())
    layout = TokenLayout.from_module(odd, token_size=4)
    names = [layer.name for layer in layout.layers]
    assert names == ["scale", "gain", "embedding.weight", "ln.weight", "half.weight"]
    assert layout.token_dtype == torch.float32
    state_dict = odd.state_dict()
    restored = layout.detokenize(layout.tokenize(state_dict)[0])
    for key, value in state_dict.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key


def test_out_buffer_is_reused():
    model = _randomize(build_zoo_model("cnn3"))
    layout = TokenLayout.from_module(model, token_size=289)
    out = torch.full((layout.num_tokens, 289), 7.0)
    tokens, _, _ = layout.tokenize(model.state_dict(), out=out)
    assert tokens.data_ptr() == out.data_ptr()
    assert torch.equal(out, _reference_tokens(model.state_dict(), layout))
    with pytest.raises(ValueError, match=r"`out` must be a contiguous"):
        layout.tokenize(model.state_dict(), out=torch.empty(3, 289))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda sd: sd.pop("module_list.4.weight"),
            r"missing key 'module_list.4.weight' \(expected shape \[32, 16, 3, 3\]",
        ),
        (
            lambda sd: sd.__setitem__("module_list.4.bias", torch.zeros(31)),
            r"key 'module_list.4.bias' has shape \[31\], expected \[32\]",
        ),
        (
            lambda sd: sd.__setitem__("module_list.0.weight", sd["module_list.0.weight"].double()),
            r"key 'module_list.0.weight' has dtype float64, expected float32",
        ),
        (
            lambda sd: sd["module_list.8.weight"].view(-1).__setitem__(5, float("nan")),
            r"'module_list.8.weight' contains 1 NaN/Inf",
        ),
        (
            lambda sd: sd["module_list.16.bias"].__setitem__(0, float("inf")),
            r"'module_list.16.bias' contains 1 NaN/Inf",
        ),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)), r"unexpected key\(s\) \['extra.weight'\]"),
    ],
    ids=["missing", "shape", "dtype", "nan", "inf", "unexpected"],
)
def test_mismatched_state_dict_raises_a_clear_error(corrupt, message):
    model = build_zoo_model("cnn3")
    layout = TokenLayout.from_module(model, token_size=289)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    corrupt(state_dict)
    with pytest.raises(ValueError, match=message):
        layout.tokenize(state_dict)


def test_detokenize_rejects_wrong_shapes():
    layout = TokenLayout.from_module(build_zoo_model("cnn3"), token_size=289)
    with pytest.raises(ValueError, match=r"Expected tokens of shape \[93, 289\]"):
        layout.detokenize(torch.zeros(92, 289))
    with pytest.raises(ValueError, match="floating-point"):
        layout.detokenize(torch.zeros(93, 289, dtype=torch.long))


def test_json_round_trip(tmp_path, model_and_layout):
    model, layout = model_and_layout
    (tmp_path / "layout.json").write_text(json.dumps(layout.to_dict()))
    loaded = TokenLayout.from_pretrained(tmp_path / "layout.json")
    assert loaded == layout
    tokens = layout.tokenize(model.state_dict())[0]
    assert torch.equal(loaded.tokenize(model.state_dict())[0], tokens)
    restored = loaded.detokenize(tokens)
    for key, value in model.state_dict().items():
        assert torch.equal(restored[key], value), key


def test_bad_layout_files(tmp_path):
    layout = TokenLayout.from_module(build_zoo_model("mlp"), token_size=16)
    data = layout.to_dict()
    with pytest.raises(ValueError, match="format_version 99"):
        TokenLayout.from_dict({**data, "format_version": 99})
    with pytest.raises(ValueError, match="missing the field 'layers'"):
        TokenLayout.from_dict({k: v for k, v in data.items() if k != "layers"})
    with pytest.raises(ValueError, match="inconsistent: num_tokens"):
        TokenLayout.from_dict({**data, "num_tokens": 1})
    (tmp_path / "sane_layout.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TokenLayout.from_pretrained(tmp_path)
    (tmp_path / "missing").mkdir()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json with a 'layout' entry, or sane_layout.json"):
        TokenLayout.from_pretrained(tmp_path / "missing")
    assert json.loads(json.dumps(data)) == data


def test_detokenize_copy_controls_aliasing():
    model = _randomize(build_zoo_model("resnet18", width=8))
    layout = TokenLayout.from_module(model, token_size=72)  # width-8 convs: 8*9=72 values per row, aligned
    tokens = layout.tokenize(model.state_dict())[0]
    views = layout.detokenize(tokens)
    copies = layout.detokenize(tokens, copy=True)
    aligned = "layer1.0.conv1.weight"
    assert layout.layers[[layer.name for layer in layout.layers].index(aligned)].bias_key is None
    assert views[aligned].data_ptr() != copies[aligned].data_ptr()
    tokens.mul_(2)  # views follow the tokens, copies do not
    assert torch.equal(views[aligned], 2 * model.state_dict()[aligned])
    for key, value in model.state_dict().items():
        assert torch.equal(copies[key], value), key


def test_conv1d_weights_are_cut_into_rows_of_output_channels():
    """GPT-2's Conv1D computes `x @ W + b` with `W` of shape `[in, out]`: output feature j is column j of W and b[j],
    so SANE's row j (one neuron, its bias appended) is `W[:, j] | b[j]`, as for `nn.Linear`'s `W[j, :] | b[j]`."""
    model = _randomize(_tiny_gpt2())
    layout = TokenLayout.from_module(model, token_size=16)
    state_dict = model.state_dict()
    tokens, _, _ = layout.tokenize(state_dict)
    for name, out_features in (("attn.c_attn", 48), ("attn.c_proj", 16), ("mlp.c_fc", 64), ("mlp.c_proj", 16)):
        key = f"transformer.h.1.{name}"
        weight, bias = state_dict[f"{key}.weight"], state_dict[f"{key}.bias"]
        layer = next(layer for layer in layout.layers if layer.weight_key == f"{key}.weight")
        assert layer.num_rows == out_features and layer.bias_key == f"{key}.bias"
        rows = tokens[layer.token_offset : layer.token_offset + layer.num_tokens].reshape(out_features, -1)
        for j in (0, out_features - 1):
            torch.testing.assert_close(rows[j, : weight.shape[0] + 1], torch.cat([weight[:, j], bias[j : j + 1]]))


@pytest.mark.parametrize(
    ("factory", "tied_key", "source_key"),
    [
        (_tiny_gpt2, "lm_head.weight", "transformer.wte.weight"),
        (
            lambda: BertForMaskedLM(
                BertConfig(
                    vocab_size=30,
                    hidden_size=8,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=16,
                    max_position_embeddings=12,
                )
            ),
            "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight",
        ),
    ],
)
def test_tied_weights_are_tokenized_once_and_restored(factory, tied_key, source_key):
    model = _randomize(factory())
    state_dict = model.state_dict()
    assert state_dict[tied_key].data_ptr() == state_dict[source_key].data_ptr()  # tied in the model itself
    layout = TokenLayout.from_module(model, token_size=16)
    assert layout.tied[tied_key] == source_key  # (BERT also ties its decoder bias to `cls.predictions.bias`)
    # `parameters()` lists a tied parameter once: every value is tokenized exactly once.
    assert layout.num_values == sum(p.numel() for p in model.parameters())
    assert tied_key not in {layer.weight_key for layer in layout.layers}
    restored = layout.detokenize(layout.tokenize(state_dict)[0])
    assert list(restored) == list(state_dict)
    assert all(torch.equal(restored[k], v) for k, v in state_dict.items())
    assert TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
