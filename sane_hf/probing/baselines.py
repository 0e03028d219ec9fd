"""Weight-space baselines for property prediction (docs/method.md#probes): raw weights W and layer statistics s(W).

Both are computed from the same normalized tokens SANE sees, so every method is probed on the same splits, rows and
scale (upstream computes them on the standardized weights too).

* `raw_weights`: the flattened real values of a checkpoint, `tokens[:, mask]` (upstream's `IdentityModel` flattens
  the tokens including their padding; padding is constant zero, so dropping it changes nothing but the width).
* `weight_statistics`: per layer the mean, variance and the 1/25/50/75/99th percentiles (upstream's
  `LayerQuintiles`): 7 features per layer. Upstream flattens each layer's tokens *including* the zero padding
  (docs/method.md#probes quirk), which biases every statistic towards zero by the layer's padding fraction; the default
  here uses the real values only, and `include_padding=True` reproduces upstream.

Statistics follow torch conventions: unbiased variance (`torch.var`) and linearly interpolated percentiles
(`torch.quantile`, numpy's default method), vectorized over checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from ..tokenization import TokenLayout


logger = logging.getLogger(__name__)

STATISTICS = ("mean", "var", "p01", "p25", "p50", "p75", "p99")
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
# torch.quantile refuses inputs of more than 2**24 elements; chunk the checkpoints to stay below.
_QUANTILE_MAX_ELEMENTS = 1 << 24


def raw_weights(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real values of each checkpoint, flattened in token order.

    Args:
        tokens (`torch.Tensor` of shape `(num_checkpoints, num_tokens, token_size)`): (normalized) tokens.
        mask (`torch.BoolTensor` of shape `(num_tokens, token_size)`): `True` on real values (`TokenLayout.mask`).

    Returns:
        `torch.Tensor` of shape `(num_checkpoints, mask.sum())`.
    """
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != tuple(mask.shape):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not match the mask {tuple(mask.shape)}: expected [N, S, T]."
        )
    return tokens[:, mask.to(tokens.device)]


def _layer_slots(layout: TokenLayout, include_padding: bool) -> Iterator[torch.Tensor]:
    """Flat `S*T` slot indices of every layer's values (real values only, or all slots of its tokens)."""
    mask = layout.mask.reshape(-1)
    token_size = layout.token_size
    for token_slice in layout.layer_token_slices():
        slots = torch.arange(token_slice.start * token_size, token_slice.stop * token_size)
        yield slots if include_padding else slots[mask[slots]]


def weight_statistics(tokens: torch.Tensor, layout: TokenLayout, include_padding: bool = False) -> torch.Tensor:
    """Per-layer statistics s(W) of each checkpoint (docs/method.md#probes, `LayerQuintiles`).

    Args:
        tokens (`torch.Tensor` of shape `(num_checkpoints, num_tokens, token_size)`): (normalized) tokens.
        layout (`TokenLayout`): the zoo's layout (layer token ranges and the padding mask).
        include_padding (`bool`, *optional*, defaults to `False`): count the zero padding of each layer's tokens as
            values, like upstream.

    Returns:
        `torch.Tensor` of shape `(num_checkpoints, num_layers * 7)`: for each layer in order, `STATISTICS`
        (mean, unbiased variance, 1/25/50/75/99th percentile).
    """
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (layout.num_tokens, layout.token_size):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not match the layout: expected [N, {layout.num_tokens}, "
            f"{layout.token_size}]."
        )
    flat = tokens.reshape(tokens.shape[0], -1)
    if not flat.is_floating_point():
        flat = flat.float()
    quantiles = torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device)
    features = []
    for slots in _layer_slots(layout, include_padding):
        values = flat[:, slots.to(flat.device)]  # [N, n_layer_values]
        chunk = max(1, _QUANTILE_MAX_ELEMENTS // max(1, values.shape[1]))
        percentiles = torch.cat(
            [torch.quantile(values[i : i + chunk], quantiles, dim=1).T for i in range(0, len(values), chunk)]
        )  # [N, 5]
        variance = values.var(dim=1, keepdim=True, correction=1 if values.shape[1] > 1 else 0)
        features.append(torch.cat([values.mean(dim=1, keepdim=True), variance, percentiles], dim=1))
    return torch.cat(features, dim=1)


def weight_statistics_names(layout: TokenLayout) -> list[str]:
    """Feature names of `weight_statistics`: `<layer name>/<statistic>`."""
    return [f"{layer.name}/{stat}" for layer in layout.layers for stat in STATISTICS]


__all__ = ["QUANTILES", "STATISTICS", "raw_weights", "weight_statistics", "weight_statistics_names"]
