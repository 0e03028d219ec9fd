"""SANE's pretraining losses (docs/method.md#objective, upstream `GammaContrastReconLoss`) as plain functions.

`loss = gamma * NT-Xent(projections of the two views) + (1 - gamma) * masked MSE(reconstructions, inputs)`.

Differences from upstream, each behind an option where the upstream behaviour is a choice rather than a bug:

* the reconstruction mean runs over real (mask True) entries only; upstream divides by all entries, padding included,
  so a layer's weight in the loss depends on its padding density (docs/method.md#departures-at-a-glance). `reduction="original"`
  keeps upstream's number;
* the NT-Xent batch size is read from the inputs, not fixed at construction (upstream needs `drop_last=True`);
* the reconstruction target can be the clean (permuted, un-noised) window instead of the noisy input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# One definition: the pure-torch loss functions live in the Hub-portable model file, so that SaneForPreTraining returns
# the same loss under `trust_remote_code`.
from ..models.sane.modeling_sane import (
    RECONSTRUCTION_REDUCTIONS,
    masked_reconstruction_loss,
    nt_xent_loss,
    reconstruction_r2,
    sane_pretraining_loss,
)


def _output_field(output: Any, name: str, index: int) -> torch.Tensor:
    """`SaneModelOutput.<name>`, `output[name]` or `output[index]` of a `(latents, reconstructions, projections)` tuple."""
    if isinstance(output, tuple | list):
        return output[index]
    if isinstance(output, Mapping):
        return output[name]
    return getattr(output, name)


def sane_loss(
    out_1: Any,
    out_2: Any,
    view_1: Mapping[str, torch.Tensor],
    view_2: Mapping[str, torch.Tensor],
    gamma: float = 0.05,
    temperature: float = 0.1,
    reduction: str = "mean",
    clean_targets: bool = False,
) -> dict[str, torch.Tensor]:
    """SANE's pretraining objective `gamma * L_contrast + (1 - gamma) * L_recon` (docs/method.md#objective).

    Args:
        out_1 (`SaneModelOutput` or tuple): the model's output on view 1 (`reconstructions` `[B, W, T]` and
            `projections` `[B, P]` are used).
        out_2 (`SaneModelOutput` or tuple): the model's output on view 2.
        view_1 (`Mapping[str, torch.Tensor]`): view 1 from `make_two_views` (`tokens`, `mask`, and `clean_tokens`
            with `clean_targets=True`).
        view_2 (`Mapping[str, torch.Tensor]`): view 2.
        gamma (`float`, *optional*, defaults to 0.05): weight of the contrastive term in [0, 1]. Below 1e-10 the
            contrastive term is skipped (reconstruction only); within 1e-10 of 1 the reconstruction term is skipped.
        temperature (`float`, *optional*, defaults to 0.1): NT-Xent temperature.
        reduction (`str`, *optional*, defaults to `"mean"`): see `masked_reconstruction_loss`.
        clean_targets (`bool`, *optional*, defaults to `False`): reconstruct each view's clean (un-noised) window
            instead of its noisy input (upstream's target, docs/method.md#departures-at-a-glance).

    Returns:
        `dict` with scalar tensors `loss` (to backpropagate), `loss_recon`, `loss_contrast` (a detached 0 when its
        term is skipped) and `r2` (reconstruction R² over real entries, no gradient).
    """
    target_key = "clean_tokens" if clean_targets else "tokens"
    for view in (view_1, view_2):
        if target_key not in view or "mask" not in view:
            raise ValueError(f"A view lacks {target_key!r} or 'mask'; build views with `make_two_views`.")
    return sane_pretraining_loss(
        torch.cat([_output_field(out_1, "reconstructions", 1), _output_field(out_2, "reconstructions", 1)]),
        torch.cat([_output_field(out_1, "projections", 2), _output_field(out_2, "projections", 2)]),
        torch.cat([view_1[target_key], view_2[target_key]]),
        torch.cat([view_1["mask"], view_2["mask"]]),
        gamma=gamma,
        temperature=temperature,
        reduction=reduction,
    )


__all__ = [
    "RECONSTRUCTION_REDUCTIONS",
    "masked_reconstruction_loss",
    "nt_xent_loss",
    "reconstruction_r2",
    "sane_loss",
    "sane_pretraining_loss",
]
