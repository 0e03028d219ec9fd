"""BatchNorm conditioning of generated networks (docs/method.md#batchnorm-conditioning).

Decoded BatchNorm running statistics are poor estimates of the statistics the decoded weights actually produce, and
the paper's ablation of its sampling ingredients shows conditioning is the key ingredient of zero-shot sampling on ResNets (10% →
60.8% accuracy). Conditioning runs forward passes on task images under `no_grad` with the BatchNorm layers in
training mode, so only their running statistics change; weights never do.

Three deliberate differences from the original `condition_bn.py`:

- Only the BatchNorm modules are switched to training mode; Dropout and every other module stay in eval mode, so
  the statistics are those of the network used at inference (the original put the whole network in `train()`).
- By default the running statistics are reset and re-estimated as a cumulative average over all passes
  (`momentum=None`), i.e. the exact mean/variance over the images seen. With 200 passes at momentum 0.1 (the
  original) the decoded statistics are forgotten anyway (0.9^200 ≈ 7e-10), so this changes nothing but noise.
  `reset=False` keeps the original exponential update from the decoded values.
- The batch size is an argument; the original permanently set `training::batchsize=32`, which leaked into the
  following fine-tuning (docs/method.md#batchnorm-conditioning, docs/method.md#departures-at-a-glance).
"""

from __future__ import annotations

import logging

import torch
from torch import nn


logger = logging.getLogger(__name__)


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm module (BatchNorm1d/2d/3d, SyncBatchNorm) of `model` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has BatchNorm running statistics to condition."""
    return bool(batchnorm_modules(model))


@torch.no_grad()
def condition_batchnorm(
    model: nn.Module,
    images: torch.Tensor,
    iterations: int = 20,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    reset: bool = True,
) -> nn.Module:
    """Re-estimate the BatchNorm running statistics of `model` on `images`, in place (docs/method.md#batchnorm-conditioning).

    A no-op for networks without BatchNorm (the model is returned unchanged).

    Args:
        model (`nn.Module`):
            The network; its parameters are not modified, and its train/eval mode is restored afterwards.
        images (`torch.Tensor`):
            Task images `[N, ...]` (the validation or train split; never the test split).
        iterations (`int`, *optional*, defaults to 20):
            Forward passes. Batches are drawn without replacement until the images are used up, then reshuffled.
        batch_size (`int`, *optional*, defaults to 64):
            Images per pass (capped at `N`).
        generator (`torch.Generator`, *optional*):
            Source of the batch order; seed it for reproducible statistics (mainly used for testing purposes).
            Without it the images are taken in order.
        reset (`bool`, *optional*, defaults to `True`):
            Reset the statistics and average them cumulatively over all passes (`momentum=None`); `False` applies
            each module's own momentum starting from the current (decoded) statistics, as the original.

    Returns:
        `nn.Module`: `model` itself.
    """
    modules = batchnorm_modules(model)
    if not modules:
        return model
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be a positive int, got {iterations!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"`images` must be a non-empty batch [N, ...], got shape {tuple(images.shape)}.")
    num_images = images.shape[0]
    batch_size = min(batch_size, num_images)
    if batch_size == 1:
        logger.warning("BatchNorm conditioning with batch size 1: BatchNorm2d over 1x1 maps may fail.")

    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in modules]
    try:
        model.eval()
        for module in modules:
            module.train()
            if reset:
                module.reset_running_stats()
                module.momentum = None  # cumulative moving average: the exact mean over every pass
        device = next((p.device for p in model.parameters()), images.device)
        order = torch.arange(num_images) if generator is None else torch.randperm(num_images, generator=generator)
        position = 0
        for _ in range(iterations):
            if position + batch_size > num_images:
                order = order if generator is None else torch.randperm(num_images, generator=generator)
                position = 0
            index = order[position : position + batch_size]
            position += batch_size
            model(images[index].to(device))
    finally:
        for module, momentum in zip(modules, momenta):
            module.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return model
