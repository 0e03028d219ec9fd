"""Per-layer standardization (docs/method.md#normalization): fitted on train, applied to all, exactly invertible."""

import json

import pytest
import torch

from sane_hf import TokenLayout, TokenNormalization
from sane_hf.zoo_models import build_zoo_model


def _zoo(name: str, n: int, token_size: int, **kwargs):
    """n randomly initialized members of one architecture, with shifted/scaled BN statistics."""
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_zoo_model(name, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(3.0, 2.0)
                module.running_var.uniform_(1.0, 5.0)
        models.append(model.state_dict())
    layout = TokenLayout.from_state_dict(models[0], token_size=token_size)
    return layout, layout.tokenize(models)[0]


def _reference_stats(tokens, layout):
    """mean_i(mean_i) and sqrt(mean_i(var_i)) over checkpoints, per layer, computed the slow way."""
    means, stds = [], []
    for span in layout.layer_token_slices():
        values = tokens[:, span][:, layout.mask[span]].double()  # [N, values of the layer]
        means.append(values.mean(1).mean().item())
        stds.append(values.var(1, unbiased=True).mean().sqrt().item() if values.shape[1] > 1 else 1.0)
    return means, stds


def test_fit_matches_the_definition_and_streams():
    layout, tokens = _zoo("resnet18", 4, 32, width=8)
    norm = TokenNormalization.fit(tokens, layout)
    means, stds = _reference_stats(tokens, layout)
    assert norm.mean == pytest.approx(means, rel=1e-9, abs=1e-12)
    assert norm.std == pytest.approx(stds, rel=1e-9)
    streamed = TokenNormalization.fit(iter([tokens[:1], tokens[1:3], tokens[3:]]), layout)
    assert streamed.mean == pytest.approx(norm.mean, rel=1e-12, abs=1e-15)
    assert streamed.std == pytest.approx(norm.std, rel=1e-12)
    assert norm.num_checkpoints == 4


def test_normalize_is_invertible_and_keeps_padding_zero():
    layout, tokens = _zoo("cnn3", 5, 289)
    norm = TokenNormalization.fit(tokens[:3], layout)  # "train" only
    normalized = norm.normalize(tokens, layout)
    assert torch.all(normalized[:, ~layout.mask] == 0)
    assert torch.allclose(norm.denormalize(normalized, layout), tokens, atol=1e-6, rtol=1e-5)
    # on the fitting set every layer is centred
    fitted = norm.normalize(tokens[:3], layout)
    for span in layout.layer_token_slices():
        values = fitted[:, span][:, layout.mask[span]]
        assert abs(values.mean().item()) < 1e-4


def test_blocked_fit_and_normalize_give_the_same_bits(monkeypatch):
    """`fit` and `normalize` work block by block on CPU (`_BLOCK_VALUES`): the result must not depend on the blocks
    (one per several checkpoints, or several per checkpoint), and `out=` rounds like `.to(out.dtype)`."""
    from sane_hf.tokenization import normalization

    layout, tokens = _zoo("resnet18", 3, 32, width=8)
    mean = torch.tensor(TokenNormalization.fit(tokens, layout).mean)
    reference = {}
    for block_values in (1 << 24, 1000, 31):  # whole batches, token ranges, one token (< token_size) per block
        monkeypatch.setattr(normalization, "_BLOCK_VALUES", block_values)
        norm = TokenNormalization.fit(iter([tokens[:2], tokens[2:]]), layout)
        normalized = norm.normalize(tokens, layout)
        out = torch.empty_like(tokens)
        assert norm.normalize(tokens, layout, out=out) is out
        in_place = tokens.clone()
        norm.normalize(in_place, layout, out=in_place)
        from_double = torch.empty_like(tokens)
        norm.normalize(tokens.double(), layout, out=from_double)
        result = (norm.mean, norm.std, normalized, out, in_place, from_double)
        reference = reference or dict(enumerate(result))
        assert norm.mean == reference[0] and norm.std == reference[1]
        for i, value in enumerate(result[2:], 2):
            assert torch.equal(value.view(torch.int32), reference[i].view(torch.int32)), (block_values, i)
        assert torch.equal(from_double, norm.normalize(tokens.double(), layout).float())
    assert torch.equal(torch.tensor(reference[0]), mean)
    # the whole-tensor arithmetic, unblocked
    per_token_mean = torch.tensor(reference[0])[layout.token_layer][:, None].float()
    per_token_std = torch.tensor(reference[1])[layout.token_layer][:, None].float()
    expected = ((tokens - per_token_mean) / per_token_std).masked_fill(~layout.mask, 0)
    assert torch.equal(reference[2].view(torch.int32), expected.view(torch.int32))
    with pytest.raises(ValueError, match="contiguous tensor of the tokens' shape"):
        norm.normalize(tokens, layout, out=torch.empty(1, *tokens.shape[1:]))


def test_running_statistics_are_standardized_once():
    layout, tokens = _zoo("resnet18", 3, 32, width=8)
    norm = TokenNormalization.fit(tokens, layout)
    index = next(i for i, layer in enumerate(layout.layers) if layer.kind == "running_var")
    span = layout.layer_token_slices()[index]
    raw = tokens[0, span, 0]
    expected = (raw - norm.mean[index]) / norm.std[index]
    assert torch.allclose(norm.normalize(tokens, layout)[0, span, 0], expected, atol=1e-6)


def test_json_round_trip_and_original_format(tmp_path):
    layout, tokens = _zoo("mlp", 3, 16)
    norm = TokenNormalization.fit(tokens, layout)
    (tmp_path / "sane_normalization.json").write_text(json.dumps(norm.to_dict()))  # an older checkpoint's sidecar
    loaded = TokenNormalization.from_pretrained(tmp_path)
    assert loaded == norm
    assert torch.equal(loaded.normalize(tokens, layout), norm.normalize(tokens, layout))
    legacy = {
        "mode": "standardize",
        **{n: {"mean": m, "std": s} for n, m, s in zip(norm.layer_names, norm.mean, norm.std)},
    }
    assert TokenNormalization.from_dict(legacy) == TokenNormalization(norm.layer_names, norm.mean, norm.std)


def test_errors():
    layout, tokens = _zoo("mlp", 2, 16)
    other_layout, _ = _zoo("cnn3", 1, 289)
    norm = TokenNormalization.fit(tokens, layout)
    with pytest.raises(ValueError, match="does not match the token layout"):
        norm.normalize(torch.zeros(1, other_layout.num_tokens, 289), other_layout)
    with pytest.raises(ValueError, match="zero checkpoints"):
        TokenNormalization.fit(iter([]), layout)
    with pytest.raises(ValueError, match="NaN/Inf"):
        TokenNormalization.fit(torch.full_like(tokens, float("nan")), layout)
    with pytest.raises(ValueError, match="mode"):
        TokenNormalization.fit(tokens, layout, mode="minmax")
    with pytest.raises(ValueError, match="std 0"):
        TokenNormalization(["a"], [0.0], [0.0])
    with pytest.raises(ValueError, match="format_version"):
        TokenNormalization.from_dict({"format_version": 7, "layers": {}})
    identity = TokenNormalization.fit(tokens, layout, mode="none")
    assert torch.equal(identity.normalize(tokens, layout), tokens)
