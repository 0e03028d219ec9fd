"""Plain, seeded training and evaluation of one zoo model on an in-memory task.

Used by the zoo builder (one model at a time, for architectures its batched trainer does not cover) and later by
the fine-tuning and evaluation of generated models (docs/method.md#evaluation). Randomness is an argument:
the batch order comes from the `torch.Generator` passed in, so a run is reproduced by
seeding that generator (and `torch.manual_seed` for dropout). Nothing here prints or logs per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


OPTIMIZERS = ("sgd", "adam", "adamw")
# Evaluation batch: large enough that the digits splits (at most 1,000 images) go through in one forward pass.
DEFAULT_EVAL_BATCH_SIZE = 2048


def make_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build one of the optimizers of the model-zoo generating factors.

    Args:
        name (`str`):
            `"sgd"` (`torch.optim.SGD` with `momentum`), `"adam"` (`torch.optim.Adam`, L2 penalty `weight_decay`)
            or `"adamw"` (`torch.optim.AdamW`, decoupled weight decay).
        params (iterable of `torch.Tensor` or parameter-group dicts):
            What to optimize, e.g. `model.parameters()`.
        lr (`float`):
            Learning rate, > 0.
        weight_decay (`float`, *optional*, defaults to 0.0):
            Weight decay, >= 0.
        momentum (`float`, *optional*, defaults to 0.9):
            Momentum of SGD, in [0, 1); ignored by Adam/AdamW.

    Raises:
        `ValueError`: unknown `name` or an out-of-range hyper-parameter.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.tasks import make_optimizer
    >>> make_optimizer("adamw", torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=1e-2).defaults["lr"]
    0.001
    ```
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: `name` must be one of {list(OPTIMIZERS)}, got {name!r}.")
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"make_optimizer: `lr` must be a finite float > 0, got {lr!r}.")
    if not isinstance(weight_decay, int | float) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"make_optimizer: `weight_decay` must be a finite float >= 0, got {weight_decay!r}.")
    if not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise ValueError(f"make_optimizer: `momentum` must be a float in [0, 1), got {momentum!r}.")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _check_split(images: torch.Tensor, labels: torch.Tensor, caller: str) -> None:
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{caller}: expected images [N, ...] and labels [N], got {list(images.shape)} and {list(labels.shape)}."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{caller}: got an empty split.")


def train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Train `model` for one epoch of shuffled mini-batches with cross-entropy.

    Args:
        model (`nn.Module`):
            Maps images `[B, ...]` to logits `[B, num_classes]`; put in training mode for the epoch.
        data (`TaskSplit` or `tuple[torch.Tensor, torch.Tensor]`):
            Images `[N, ...]` and int64 labels `[N]`, e.g. `task.train`.
        optimizer (`torch.optim.Optimizer`):
            Optimizer over `model`'s parameters (see `make_optimizer`).
        batch_size (`int`):
            Mini-batch size; the last batch holds the remaining `N % batch_size` images (none are dropped).
        generator (`torch.Generator`, *optional*):
            Source of the shuffling permutation; seed it to reproduce the epoch (mainly used for testing purposes).
            Dropout draws from the global RNG (`torch.manual_seed`).

    Returns:
        `dict[str, float]`: `"loss"` and `"acc"`, averages over the epoch's samples as seen during training (train
        mode, parameters changing along the epoch).
    """
    images, labels = data
    _check_split(images, labels, "train_epoch")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"train_epoch: `batch_size` must be an int >= 1, got {batch_size!r}.")
    model.train()
    num_samples = labels.shape[0]
    order = torch.randperm(num_samples, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long)
    for start in range(0, num_samples, batch_size):
        index = order[start : start + batch_size]
        batch_labels = labels[index]
        logits = model(images[index])
        loss = F.cross_entropy(logits, batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * index.numel()
        correct += (logits.detach().argmax(dim=1) == batch_labels).sum()
    return {"loss": float(loss_sum) / num_samples, "acc": int(correct) / num_samples}


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on `images`/`labels`, in eval mode and without gradients.

    Args:
        model (`nn.Module`):
            Maps images `[B, ...]` to logits `[B, num_classes]`. Its train/eval mode is restored afterwards.
        images (`torch.Tensor`):
            Images `[N, ...]`.
        labels (`torch.Tensor`):
            Int64 labels `[N]`.
        batch_size (`int`, *optional*, defaults to 2048):
            Images per forward pass; small splits (digits) go through in one pass.

    Returns:
        `dict[str, float]`: `"loss"` (mean cross-entropy; `nan`/`inf` for a diverged model) and `"acc"` (fraction
        of correct argmax predictions).
    """
    _check_split(images, labels, "evaluate_split")
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        for start in range(0, labels.shape[0], batch_size):
            logits = model(images[start : start + batch_size])
            batch_labels = labels[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == batch_labels).sum()
    finally:
        model.train(was_training)
    num_samples = labels.shape[0]
    return {"loss": float(loss_sum) / num_samples, "acc": int(correct) / num_samples}
