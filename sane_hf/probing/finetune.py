"""Fine-tuning route of property prediction: the SANE encoder plus a regression head, trained end to end.

The paper only probes frozen embeddings linearly (docs/method.md#probes). A frozen mean over token latents keeps what the
pretraining objective (reconstruction + contrast) put into the mean, which need not be what predicts accuracy;
`SaneForPropertyPrediction` lets the encoder learn to put it there. It encodes whole models with haloed windows
(docs/method.md#windows-and-halos) *with* gradients, mean-pools the token latents (as the probe embedding, docs/method.md#probes) and
predicts all (standardized) numeric properties jointly with a small head. `finetune_property_predictor` trains it with
AdamW (linear warm-up, cosine decay) and early stopping on the validation loss, restoring the best epoch.

It is a plain `nn.Module` around a `SaneModel` (not a Hub-portable model class): a research baseline beside the probe.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..constants import VALIDATION_SPLIT
from ..data.windows import ArrowTokenStore
from ..models.sane import SaneModel, haloed_window_index
from ..tokenization import TokenLayout, TokenPermuter
from .embed import layer_pooling_matrix, pool_token_latents, read_columns
from .probe import r2_score


logger = logging.getLogger(__name__)

# Poolings of the fine-tuned predictor: the mean latent, or per-layer mean and spread (the `stats` probe's features).
FINETUNE_POOLINGS = ("mean", "stats")


class SaneForPropertyPrediction(nn.Module):
    """A SANE encoder with a regression head on the mean-pooled token latents.

    ```
    tokens [B, S, T] -> haloed encoder windows (with gradients) -> latents [B, S, L] -> mean over S -> head -> [B, P]
    ```

    Args:
        backbone (`SaneModel`): the pretrained SANE; only its encoder side (input projection, position embedding,
            encoder blocks, latent projection) is used and trained.
        num_targets (`int`): number of properties `P` predicted jointly.
        hidden_size (`int`, *optional*, defaults to 0): width of a hidden layer in the head (0: a linear head,
            `LayerNorm` + `Linear`).
        dropout (`float`, *optional*, defaults to 0.0): dropout before the head's last layer.
        pooling (`str`, *optional*, defaults to `"mean"`): `"mean"` over all token latents, or `"stats"`: the mean
            and standard deviation of the latents of each layer's tokens (`embed.pool_token_latents`).
        token_layer (`torch.Tensor`, *optional*): the layer index of every token (`layout.positions[:, 1]`), needed
            by `pooling="stats"`.

    Example:

    ```python
    >>> from sane_hf.models.sane import SaneConfig, SaneModel
    >>> backbone = SaneModel(SaneConfig(token_size=12, d_model=32, n_heads=4, n_layers=2, latent_dim=8,
    ...                                 window_size=16, max_positions=[64, 8, 16]))
    >>> model = SaneForPropertyPrediction(backbone, num_targets=3)
    >>> positions = torch.stack([torch.arange(40), torch.arange(40) // 8, torch.arange(40) % 8], dim=-1)
    >>> model(torch.randn(2, 40, 12), positions).shape
    torch.Size([2, 3])
    ```
    """

    def __init__(
        self,
        backbone: SaneModel,
        num_targets: int,
        hidden_size: int = 0,
        dropout: float = 0.0,
        pooling: str = "mean",
        token_layer: torch.Tensor | None = None,
    ):
        super().__init__()
        if num_targets < 1:
            raise ValueError(f"`num_targets` must be >= 1, got {num_targets}.")
        if pooling not in FINETUNE_POOLINGS:
            raise ValueError(f"`pooling` must be one of {FINETUNE_POOLINGS}, got {pooling!r}.")
        if pooling == "stats" and token_layer is None:
            raise ValueError("`pooling='stats'` needs `token_layer` (the layer index of every token).")
        self.sane = backbone
        self.pooling = pooling
        latent_dim = backbone.config.latent_dim
        features = latent_dim
        if pooling == "stats":
            self.register_buffer("layer_pooling", layer_pooling_matrix(token_layer), persistent=False)
            features = 2 * self.layer_pooling.shape[0] * latent_dim
        layers: list[nn.Module] = [nn.LayerNorm(features)]
        if hidden_size:
            layers += [nn.Linear(features, hidden_size), nn.GELU()]
        layers += [nn.Dropout(dropout), nn.Linear(hidden_size or features, num_targets)]
        self.head = nn.Sequential(*layers)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of the SANE encoder side (the decoder and projection head are not used)."""
        sane = self.sane
        modules = [sane.input_projection, sane.position_embedding, sane.encoder, sane.to_latent]
        return [p for module in modules for p in module.parameters()]

    def pooled_latents(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Pooled token latents of full sequences, through haloed windows, with gradients: the mean `[B, L]`, or
        with `pooling="stats"` the per-layer mean and standard deviation `[B, 2 * num_layers * L]` (as the `stats`
        probe pools them).

        Every token is content of exactly one window (`haloed_window_index`), so the mean over all tokens is the sum
        of each window's content latents divided by `S`. A sequence that fits in one window is one plain pass.
        """
        if positions.ndim == 2:
            positions = positions.unsqueeze(0)
        batch_size, seq_len = tokens.shape[:2]
        positions = positions.to(tokens.device).expand(batch_size, -1, -1)
        config = self.sane.config
        if self.pooling == "stats" and seq_len <= config.window_size:
            return pool_token_latents(self.sane.encode(tokens, positions), self.layer_pooling, "stats")
        if seq_len <= config.window_size:
            return self.sane.encode(tokens, positions).mean(dim=1)
        snippet_index, content_mask = haloed_window_index(
            seq_len, config.content_size, config.halo_size, device=tokens.device
        )
        n_windows, snippet_len = snippet_index.shape
        snippets = tokens[:, snippet_index].reshape(batch_size * n_windows, snippet_len, -1)
        snippet_positions = positions[:, snippet_index].reshape(batch_size * n_windows, snippet_len, 3)
        latents = self.sane.encode(snippets, snippet_positions).reshape(batch_size, n_windows, snippet_len, -1)
        if self.pooling == "stats":
            # Each window's content tokens, window after window: every token once, in sequence order.
            return pool_token_latents(latents[:, content_mask], self.layer_pooling, "stats")
        weights = content_mask.to(latents.dtype)[None, :, :, None]
        return (latents * weights).sum(dim=(1, 2)) / seq_len

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Predictions `[B, num_targets]` (in the standardized target space the head was trained in)."""
        return self.head(self.pooled_latents(tokens, positions))


def _masked_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite targets only (a checkpoint may lack a property, docs/method.md#probes)."""
    valid = torch.isfinite(targets)
    if not valid.any():
        return predictions.sum() * 0.0
    return ((predictions - torch.nan_to_num(targets)) ** 2)[valid].mean()


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def _predict(
    model: SaneForPropertyPrediction,
    store: ArrowTokenStore,
    rows: np.ndarray,
    positions: torch.Tensor,
    batch_size: int,
    token_transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(rows), batch_size):
        tokens = store.rows(torch.from_numpy(rows[start : start + batch_size])).float()
        if token_transform is not None:
            tokens = token_transform(tokens)
        outputs.append(model(tokens.to(device), positions).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.head[-1].out_features)


def finetune_property_predictor(
    backbone: SaneModel,
    splits: Mapping[str, Any],
    layout: TokenLayout,
    properties: Sequence[str],
    rows_by_split: Mapping[str, Sequence[int]] | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 3e-4,
    head_lr: float | None = None,
    weight_decay: float = 1e-4,
    warmup_fraction: float = 0.1,
    patience: int = 3,
    hidden_size: int = 64,
    dropout: float = 0.0,
    seed: int = 0,
    token_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_grad_norm: float | None = 1.0,
    permuter: TokenPermuter | None = None,
    pooling: str = "mean",
) -> dict[str, Any]:
    """Fine-tune a copy of `backbone` with a regression head to predict `properties`, and score it like the probe.

    Targets are standardized with the train mean and std of each property, predicted jointly, and trained with a
    masked MSE (missing targets are skipped). After each epoch the mean validation loss decides early stopping
    (`patience` epochs without improvement); the weights of the best epoch are restored before scoring. Without a
    validation split, training runs all `epochs`.

    Args:
        backbone (`SaneModel`): the pretrained SANE; it is deep-copied, never modified.
        splits (`Mapping[str, datasets.Dataset]`): `train` (required), `validation`, `test` splits of a tokenized
            zoo.
        layout (`TokenLayout`): the zoo's layout.
        properties (`Sequence[str]`): numeric property columns.
        rows_by_split (`Mapping[str, Sequence[int]]`, *optional*): the rows of each split to use (default: all).
        epochs (`int`, *optional*, defaults to 10): maximum passes over the train rows.
        batch_size (`int`, *optional*, defaults to 32): checkpoints per step.
        lr (`float`, *optional*, defaults to 3e-4): peak learning rate of the encoder.
        head_lr (`float`, *optional*): peak learning rate of the head (default: `10 * lr`).
        weight_decay (`float`, *optional*, defaults to 1e-4): AdamW weight decay (matrices only).
        warmup_fraction (`float`, *optional*, defaults to 0.1): linear warm-up share of the steps, then cosine decay.
        patience (`int`, *optional*, defaults to 3): epochs without a better val loss before stopping.
        hidden_size (`int`, *optional*, defaults to 64) / dropout (`float`, *optional*, defaults to 0.0): the head
            (`SaneForPropertyPrediction`).
        seed (`int`, *optional*, defaults to 0): seed of the head's initialization and the batch order.
        token_transform (`Callable`, *optional*): applied to each token batch (as in `embed_zoo`).
        max_grad_norm (`float`, *optional*, defaults to 1.0): gradient clipping (None: off).
        permuter (`TokenPermuter`, *optional*): permutation augmentation: every train checkpoint is replaced by a
            random function-preserving permutation of itself at every step (docs/method.md#objective). The properties of a
            network do not change under these permutations, so this is free, label-preserving data augmentation
            against the fast overfitting of a fine-tuned encoder.
        pooling (`str`, *optional*, defaults to `"mean"`): `SaneForPropertyPrediction`'s pooling.

    Returns:
        `dict`: `scores` `{property: {split: R²}}`, `predictions` / `targets` `{property: {split: np.ndarray}}` (in
        the original units), `best_epoch`, `epochs_run`, `history` (per-epoch train/val loss), `seconds`, and `model`
        (the fine-tuned `SaneForPropertyPrediction`, best epoch).
    """
    if "train" not in splits:
        raise ValueError(f"Fine-tuning needs a 'train' split; got {sorted(splits)}.")
    if not properties:
        raise ValueError("Fine-tuning needs at least one numeric property.")
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    start_time = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stores = {split: ArrowTokenStore(dataset) for split, dataset in splits.items()}
    rows = {
        split: np.asarray(rows_by_split[split], dtype=np.int64)
        if rows_by_split is not None and split in rows_by_split
        else np.arange(stores[split].num_rows, dtype=np.int64)
        for split in splits
    }
    targets = {}
    for split, dataset in splits.items():
        columns = read_columns(dataset, list(properties), rows[split])
        targets[split] = torch.from_numpy(np.stack([columns[name] for name in properties], axis=1))  # float64
    train_targets = targets["train"]
    mean = torch.nanmean(train_targets, dim=0)
    std = torch.sqrt(torch.nanmean((train_targets - mean) ** 2, dim=0))
    std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
    scaled = {split: ((values - mean) / std).float() for split, values in targets.items()}

    model = SaneForPropertyPrediction(
        copy.deepcopy(backbone),
        len(properties),
        hidden_size,
        dropout,
        pooling=pooling,
        token_layer=layout.positions[:, 1],
    )
    device = next(backbone.parameters()).device
    model.to(device)
    positions = layout.positions.to(device)
    encoder = model.encoder_parameters()
    head = list(model.head.parameters())
    groups = [
        {"params": [p for p in encoder if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in encoder if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
        {"params": [p for p in head if p.ndim >= 2], "lr": head_lr or 10 * lr, "weight_decay": weight_decay},
        {"params": [p for p in head if p.ndim < 2], "lr": head_lr or 10 * lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(rows["train"]) / batch_size)
    total_steps = steps_per_epoch * epochs
    scheduler = _cosine_with_warmup(optimizer, total_steps, max(1, int(warmup_fraction * total_steps)))

    def loss_and_predictions(split: str) -> tuple[float, torch.Tensor]:
        model.eval()
        predictions = _predict(model, stores[split], rows[split], positions, batch_size * 2, token_transform)
        return float(_masked_mse(predictions, scaled[split])), predictions

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    has_val = VALIDATION_SPLIT in splits and len(rows[VALIDATION_SPLIT]) > 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(rows["train"]), generator=generator).numpy()  # positions in rows["train"]
        running, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            batch_rows = rows["train"][batch]
            tokens = stores["train"].rows(torch.from_numpy(batch_rows)).float()
            if permuter is not None:
                tokens = permuter.permute_models(tokens, generator)
            if token_transform is not None:
                tokens = token_transform(tokens)
            batch_targets = scaled["train"][torch.from_numpy(batch)].to(device)
            loss = _masked_mse(model(tokens.to(device), positions), batch_targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(batch_rows)
            count += len(batch_rows)
        record = {"epoch": epoch, "train_loss": running / max(1, count)}
        if has_val:
            record["val_loss"], _ = loss_and_predictions(VALIDATION_SPLIT)
        history.append(record)
        logger.info("fine-tune epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items() if k != "epoch"})
        monitored = record.get("val_loss", record["train_loss"])
        if monitored < best_loss:
            best_loss, best_epoch, stale = monitored, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if has_val and stale >= patience:
                logger.info("Early stopping after epoch %d (best epoch %d).", epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    scores: dict[str, dict[str, float]] = {name: {} for name in properties}
    predictions_out: dict[str, dict[str, np.ndarray]] = {name: {} for name in properties}
    targets_out: dict[str, dict[str, np.ndarray]] = {name: {} for name in properties}
    for split in splits:
        if len(rows[split]) == 0:
            continue
        _, predictions = loss_and_predictions(split)
        predictions = predictions.double() * std + mean  # back to the original units
        for j, name in enumerate(properties):
            y = targets[split][:, j].numpy()
            keep = np.isfinite(y)
            y_hat = predictions[:, j].numpy()
            scores[name][split] = r2_score(y[keep], y_hat[keep])
            predictions_out[name][split] = y_hat[keep]
            targets_out[name][split] = y[keep]
    model.eval()
    return {
        "scores": scores,
        "predictions": predictions_out,
        "targets": targets_out,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history,
        "seconds": round(time.perf_counter() - start_time, 2),
        "model": model,
    }


__all__ = ["SaneForPropertyPrediction", "finetune_property_predictor"]
