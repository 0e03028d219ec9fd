"""Optimizer and schedule of SANE pretraining (docs/method.md#objective)."""

from __future__ import annotations

import torch
from torch import nn


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups as upstream: weight decay on tensors with ndim >= 2 (linear weights, embeddings), none on
    biases and LayerNorm weights (docs/method.md#objective)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_sane_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW over `optimizer_param_groups`, with the fused (one kernel per step) implementation where every parameter
    lives on a device that has it (CPU, CUDA, MPS), else the default one."""
    groups = optimizer_param_groups(model, weight_decay)
    fused_devices = {"cpu", "cuda", "mps", "xpu"}
    fused = all(p.device.type in fused_devices and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def make_one_cycle_scheduler(
    optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.3
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle exactly as upstream: cosine, start lr/25, end lr/25/1e4, Adam beta1 cycling 0.95 -> 0.85 -> 0.95."""
    if total_steps < 1:
        raise ValueError(f"OneCycle needs at least one optimizer step, got total_steps={total_steps}.")
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy="cos",
        div_factor=25.0,
        final_div_factor=1e4,
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
    )
