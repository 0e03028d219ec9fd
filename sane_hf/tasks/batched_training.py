"""Batched training of zoo members: `M` models of one `nn.Sequential` architecture trained as one computation.

The zoo builder (`sane_hf.data.zoo_builder`) trains the members of a zoo that share an architecture configuration and
optimizer together: per-operation overhead dominates the tiny networks of a zoo, so one grouped convolution or
batched matmul over `M` models replaces `M` small ones. Parameters are stacked `[M, ...]`; `BatchedOptimizer`
applies the `torch.optim` update rules with one learning rate and weight decay per model. Without dropout, batched
and one-at-a-time training (`sane_hf.tasks.train_epoch`) agree to ~1e-7 after two epochs
(`tests/tasks/test_batched_training.py` checks them against `torch.optim`).

Randomness is an argument: each model's batch order and dropout masks come from its own `torch.Generator`, so a
model's training does not depend on the other members of its group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import TASK_SPLITS, TaskData


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.LeakyReLU, nn.SiLU, nn.Identity)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d)


def supports_batched_training(model: nn.Module, layers: nn.Sequential) -> bool:
    """Whether `BatchedSequential` can run `layers` (the layer stack of `model`): no buffers, and only plain
    convolutions, linear layers, flatten, dropout, pooling and element-wise activations."""
    if any(True for _ in model.buffers()):
        return False
    for module in layers:
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                return False
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                return False
        elif not isinstance(module, (nn.Linear, nn.Dropout, *_POOLING, *_ELEMENTWISE)):
            return False
    return True


class BatchedSequential:
    """Runs `M` models of one Sequential architecture as one computation on stacked parameters.

    Spatial activations are laid out `[N, M*C, H, W]` (model-major channels) in channels-last memory format, so a
    convolution is one grouped convolution with `groups=M`, and pooling and activations (per channel) apply
    unchanged (channels-last, because max-pooling over many channels is much slower in NCHW on CPU). After `Flatten`
    the activations are `[M, N, F]` and linear layers are batched matmuls. Dropout masks come from one generator per
    model, so a model's masks do not depend on the other members of its group.
    """

    def __init__(
        self,
        layers: nn.Sequential,
        flatten_input: bool,
        dropouts: list[float],
        dropout_generators: list[torch.Generator],
    ) -> None:
        self.layers = layers
        self.flatten_input = flatten_input
        self.num_models = len(dropouts)
        self.keep = torch.tensor([1.0 - p for p in dropouts])
        self.dropping = [m for m, p in enumerate(dropouts) if p > 0]
        self.dropout_generators = dropout_generators

    def _dropout(self, hidden: torch.Tensor) -> torch.Tensor:
        M = self.num_models
        if not self.dropping:
            return hidden
        # One uniform draw per activation of each model with dropout, from that model's own generator, written into
        # a buffer laid out like `hidden` in memory: spatial [N, H, W, M, C] (channels-last [N, M*C, H, W]) or
        # [M, N, F]. Models without dropout keep 0 there, which is always < keep = 1.
        if hidden.ndim == 4:
            n, mc, h, w = hidden.shape
            noise = torch.zeros(n, h, w, M, mc // M, dtype=hidden.dtype)
            per_model = [noise[:, :, :, m] for m in range(M)]
            keep = self.keep.repeat_interleave(mc // M).view(1, mc, 1, 1)
            noise = noise.view(n, h, w, mc).permute(0, 3, 1, 2)
        else:
            noise = torch.zeros(hidden.shape, dtype=hidden.dtype)
            per_model = list(noise)
            keep = self.keep.view(M, 1, 1)
        for m in self.dropping:
            per_model[m].uniform_(generator=self.dropout_generators[m])
        return hidden * ((noise < keep) / keep)

    def __call__(self, params: list[torch.Tensor], images: torch.Tensor, train: bool) -> torch.Tensor:
        """Logits `[M, N, classes]` for per-model images `[N, M, C, H, W]`."""
        M = self.num_models
        n = images.shape[0]
        if self.flatten_input:
            hidden = images.reshape(n, M, -1).transpose(0, 1)
        else:
            hidden = images.reshape(n, -1, *images.shape[3:]).contiguous(memory_format=torch.channels_last)
        param_iter = iter(params)
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                weight = next(param_iter)
                bias = next(param_iter).reshape(-1) if module.bias is not None else None
                hidden = F.conv2d(
                    hidden,
                    weight.reshape(-1, *weight.shape[2:]),
                    bias,
                    stride=module.stride,
                    padding=module.padding,
                    dilation=module.dilation,
                    groups=M,
                )
            elif isinstance(module, nn.Linear):
                weight = next(param_iter)
                if module.bias is not None:
                    hidden = torch.baddbmm(next(param_iter).unsqueeze(1), hidden, weight.transpose(1, 2))
                else:
                    hidden = torch.bmm(hidden, weight.transpose(1, 2))
            elif isinstance(module, nn.Flatten):
                # reshape follows the logical NCHW order, i.e. what nn.Flatten does on one model.
                hidden = hidden.reshape(n, M, -1).transpose(0, 1)
            elif isinstance(module, nn.Dropout):
                if train:
                    hidden = self._dropout(hidden)
            else:
                hidden = module(hidden)
        return hidden


class BatchedOptimizer:
    """SGD (momentum) / Adam / AdamW over stacked parameters `[M, ...]` with one lr and weight decay per model.

    The update rules are those of `torch.optim.SGD` (dampening 0, no Nesterov), `torch.optim.Adam` (L2 penalty added
    to the gradient) and `torch.optim.AdamW` (decoupled decay), with their default betas and eps.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(
        self, name: str, params: list[torch.Tensor], lrs: list[float], weight_decays: list[float], momentum: float
    ) -> None:
        self.name = name
        self.params = params
        self.momentum = momentum
        self.step_count = 0
        lr = torch.tensor(lrs, dtype=torch.float32)
        wd = torch.tensor(weight_decays, dtype=torch.float32)
        self.lr = [lr.view(-1, *([1] * (p.ndim - 1))) for p in params]
        self.wd = [wd.view(-1, *([1] * (p.ndim - 1))) for p in params]
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        for param, lr, wd, state in zip(self.params, self.lr, self.wd, self.state):
            grad = param.grad
            if self.name == "sgd":
                grad = grad + wd * param
                if self.momentum != 0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(self.momentum).add_(grad)
                    grad = state["momentum_buffer"]
                param.sub_(lr * grad)
                continue
            if self.name == "adamw":
                param.mul_(1 - lr * wd)
            else:
                grad = grad + wd * param
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**self.step_count
            bias_correction2_sqrt = math.sqrt(1 - beta2**self.step_count)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.sub_((lr / bias_correction1) * exp_avg / denom)


def batched_evaluate(
    network: BatchedSequential, params: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> list[dict[str, float]]:
    """Per-model mean cross-entropy and accuracy of all group members on one split (shared images)."""
    M = network.num_models
    # Chunks keep the largest activation (e.g. [n, M*8, 8, 8]) at a few MB: big fresh buffers are dominated by page
    # faults on the project machines (BENCHMARKS.md, levers of the tokenizer).
    chunk = max(16, 4096 // M)
    loss_sum = torch.zeros(M, dtype=torch.float64)
    correct = torch.zeros(M, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, labels.shape[0], chunk):
            batch = images[start : start + chunk]
            batch_labels = labels[start : start + chunk]
            logits = network(params, batch.unsqueeze(1).expand(-1, M, *batch.shape[1:]), train=False)
            losses = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch_labels.repeat(M), reduction="none"
            ).view(M, -1)
            loss_sum += losses.double().sum(dim=1)
            correct += (logits.argmax(dim=-1) == batch_labels).sum(dim=1)
    n = labels.shape[0]
    return [{"loss": float(loss_sum[m]) / n, "acc": int(correct[m]) / n} for m in range(M)]


def train_batched(
    models: list[nn.Module],
    layers: nn.Sequential,
    flatten_input: bool,
    task: TaskData,
    *,
    optimizer: str,
    lrs: list[float],
    weight_decays: list[float],
    momentum: float,
    dropouts: list[float],
    epochs: int,
    batch_size: int,
    order_generators: list[torch.Generator],
    dropout_generators: list[torch.Generator],
) -> Iterator[tuple[int, list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]]]:
    """Train `models` together for `epochs` epochs; after each epoch (and once before training, epoch 0) copy the
    weights back into `models` and yield `(epoch, train, val, test)` with one `{"loss", "acc"}` per model and split.

    Args:
        models (`list[nn.Module]`):
            The group, with identical parameter shapes; their initial weights are where training starts.
        layers (`nn.Sequential`), flatten_input (`bool`):
            The architecture's layer stack (with dropout modules if any member has dropout) and whether the images
            are flattened before it (an MLP); see `supports_batched_training`.
        task (`TaskData`):
            Trained on `task.train`; metrics on the full train, val and test splits in eval mode.
        optimizer (`str`), lrs, weight_decays (`list[float]`), momentum (`float`):
            `"sgd"`, `"adam"` or `"adamw"` for the whole group, one learning rate and weight decay per model.
        dropouts (`list[float]`):
            Dropout probability per model.
        epochs (`int`), batch_size (`int`):
            As `train_epoch`; epoch `e` visits the train split in the order `torch.randperm` draws from the model's
            order generator, the same order as `train_epoch` with that generator.
        order_generators, dropout_generators (`list[torch.Generator]`):
            One per model: its batch order and its dropout masks.
    """
    shapes = [tuple(p.shape) for p in models[0].parameters()]
    for model in models:
        if [tuple(p.shape) for p in model.parameters()] != shapes:
            raise RuntimeError(f"Batched training needs identical parameter shapes; got {model} vs {models[0]}.")
    params = [
        torch.stack([list(model.parameters())[j].detach() for model in models]).requires_grad_()
        for j in range(len(shapes))
    ]
    network = BatchedSequential(layers, flatten_input, dropouts, dropout_generators)
    updates = BatchedOptimizer(optimizer, params, lrs, weight_decays, momentum)
    train_images, train_labels = task.train
    num_samples = train_labels.shape[0]
    M = len(models)
    for epoch in range(epochs + 1):
        if epoch > 0:
            # The same per-model batch order as `train_epoch` with the same generator.
            order = torch.stack([torch.randperm(num_samples, generator=g) for g in order_generators])
            for start in range(0, num_samples, batch_size):
                index = order[:, start : start + batch_size]
                logits = network(params, train_images[index.T], train=True)
                losses = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), train_labels[index].reshape(-1), reduction="none"
                )
                # Sum of per-model mean losses: each model gets exactly the gradient of its own loss.
                loss = losses.view(M, -1).mean(dim=1).sum()
                updates.zero_grad()
                loss.backward()
                updates.step()
        train, val, test = (batched_evaluate(network, params, *task.split(split)) for split in TASK_SPLITS)
        with torch.no_grad():
            for m, model in enumerate(models):
                for target, stacked in zip(model.parameters(), params):
                    target.copy_(stacked[m])
        yield epoch, train, val, test
