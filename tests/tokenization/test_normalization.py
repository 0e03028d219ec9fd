"""Per-layer standardization (SANE_METHOD §1.8): fitted on train, applied to all, exactly invertible."""

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
    norm.save_pretrained(tmp_path)
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
