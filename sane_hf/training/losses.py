"""SANE's pretraining losses (SANE_METHOD §4.3, upstream `GammaContrastReconLoss`) as plain functions.

`loss = gamma * NT-Xent(projections of the two views) + (1 - gamma) * masked MSE(reconstructions, inputs)`.

Differences from upstream, each behind an option where the upstream behaviour is a choice rather than a bug:

* the reconstruction mean runs over real (mask True) entries only; upstream divides by all entries, padding included,
  so a layer's weight in the loss depends on its padding density (SANE_METHOD §7.4 item 11). `reduction="original"`
  keeps upstream's number;
* the NT-Xent batch size is read from the inputs, not fixed at construction (upstream needs `drop_last=True`);
* the reconstruction target can be the clean (permuted, un-noised) window instead of the noisy input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F


RECONSTRUCTION_REDUCTIONS = ("mean", "original")
# Upstream switches a term off below this distance of gamma to 0 or 1 (SANE_METHOD §4.3).
_GAMMA_EPS = 1e-10


def masked_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Mean squared error of reconstructed tokens.

    Args:
        pred (`torch.Tensor` of shape `(B, W, T)`): reconstructions (values at padding are ignored).
        target (`torch.Tensor` of shape `(B, W, T)`): targets.
        mask (`torch.BoolTensor` of shape `(B, W, T)`): True on real values.
        reduction (`str`, *optional*, defaults to `"mean"`): `"mean"`: the mean over real entries only;
            `"original"`: upstream's `mean((mask * pred - target)^2)` over all entries, padding included.

    Returns:
        A scalar float32 tensor (0 when there is no real entry).
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"`pred`, `target` and `mask` must have one shape, got {list(pred.shape)}, {list(target.shape)}, "
            f"{list(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"`mask` must be a bool tensor, got {mask.dtype}.")
    pred, target = pred.float(), target.float()
    if reduction == "mean":
        # `where`, not a product: whatever the model puts at padding (even inf/NaN) cannot leak into the loss.
        squared = torch.where(mask, pred - target, 0).square()
        return squared.sum() / mask.sum().clamp_min(1)
    if reduction == "original":
        return (pred * mask - target).square().mean()
    raise ValueError(f"`reduction` must be one of {RECONSTRUCTION_REDUCTIONS}, got {reduction!r}.")


def reconstruction_r2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination `1 - SS_res / SS_tot` over the real entries (a monitoring metric, no gradient).

    Unlike upstream's `loss/rsq` (torchmetrics explained variance per token column across the batch, averaged), it
    is one global R² over all real values of the batch, so padding columns cannot distort it.
    """
    with torch.no_grad():
        pred, target = pred.float(), target.float()
        count = mask.sum().clamp_min(1)
        mean = torch.where(mask, target, 0).sum() / count
        ss_res = torch.where(mask, pred - target, 0).square().sum()
        ss_tot = torch.where(mask, target - mean, 0).square().sum()
        return 1 - ss_res / ss_tot.clamp_min(torch.finfo(torch.float32).tiny)


def nt_xent_loss(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (SANE_METHOD §4.3).

    With `u = cat(z_i, z_j)` (2B rows) and `s_ab = cos(u_a, u_b) / temperature`, row a's positive is its partner
    `a ± B` and its negatives are the other 2B - 2 rows (itself excluded). The loss is the cross-entropy of picking
    the positive, averaged over the 2B rows (upstream sums and divides by 2B: the same number).

    Args:
        z_i (`torch.Tensor` of shape `(B, P)`): projections of view 1.
        z_j (`torch.Tensor` of shape `(B, P)`): projections of view 2 (row b is the positive of `z_i[b]`).
        temperature (`float`, *optional*, defaults to 0.1): `tau`.

    Returns:
        A scalar float32 tensor. Any batch size works (no `drop_last` needed); B = 1 gives 0 (no negatives).
    """
    if z_i.ndim != 2 or z_i.shape != z_j.shape or z_i.shape[0] < 1:
        raise ValueError(
            f"`z_i` and `z_j` must both have shape [B, P] with B >= 1, got {list(z_i.shape)} and {list(z_j.shape)}."
        )
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a positive float, got {temperature!r}.")
    batch_size = z_i.shape[0]
    u = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)
    similarity = u @ u.T / temperature
    self_mask = torch.eye(2 * batch_size, dtype=torch.bool, device=u.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(batch_size, 2 * batch_size), torch.arange(batch_size)]).to(u.device)
    return F.cross_entropy(similarity, positives)


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
    """SANE's pretraining objective `gamma * L_contrast + (1 - gamma) * L_recon` (SANE_METHOD §4.3).

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
            instead of its noisy input (upstream's target, SANE_METHOD §7.4 item 11).

    Returns:
        `dict` with scalar tensors `loss` (to backpropagate), `loss_recon`, `loss_contrast` (a detached 0 when its
        term is skipped) and `r2` (reconstruction R² over real entries, no gradient).
    """
    if not (isinstance(gamma, int | float) and 0 <= gamma <= 1):
        raise ValueError(f"`gamma` must be in [0, 1], got {gamma!r}.")
    target_key = "clean_tokens" if clean_targets else "tokens"
    for view in (view_1, view_2):
        if target_key not in view or "mask" not in view:
            raise ValueError(f"A view lacks {target_key!r} or 'mask'; build views with `make_two_views`.")
    # Both views in one tensor, as upstream: the mean runs over the real entries of the 2B windows together.
    pred = torch.cat([_output_field(out_1, "reconstructions", 1), _output_field(out_2, "reconstructions", 1)])
    target = torch.cat([view_1[target_key], view_2[target_key]])
    mask = torch.cat([view_1["mask"], view_2["mask"]])
    zero = torch.zeros((), device=pred.device)

    use_contrast = gamma >= _GAMMA_EPS
    use_recon = abs(1 - gamma) >= _GAMMA_EPS
    loss_recon = masked_reconstruction_loss(pred, target, mask, reduction) if use_recon else zero
    if use_contrast:
        z_i = _output_field(out_1, "projections", 2)
        z_j = _output_field(out_2, "projections", 2)
        loss_contrast = nt_xent_loss(z_i, z_j, temperature)
    else:
        loss_contrast = zero
    if use_recon and use_contrast:
        loss = gamma * loss_contrast + (1 - gamma) * loss_recon
    else:
        loss = loss_recon if use_recon else loss_contrast
    return {
        "loss": loss,
        "loss_recon": loss_recon,
        "loss_contrast": loss_contrast,
        "r2": reconstruction_r2(pred, target, mask),
    }
