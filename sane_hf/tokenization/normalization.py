"""Per-layer standardization of tokens (docs/method.md#normalization), fitted once on the train split and applied to all.

Differences from the original, on purpose (docs/method.md#departures-at-a-glance):

* statistics come from the train split only and are applied to every split (the original fitted each split on
  itself);
* BatchNorm running statistics are standardized once (the original applied the transform twice and undid it once);
* it works on tokens, vectorized over layers: `(x - mean[layer]) / std[layer]` on real values, padding stays zero.

Like the original, the weight and its bias column share one mean and std, and a layer's statistics are
`mean_i(mean_i)` and `sqrt(mean_i(var_i))` over checkpoints `i` (unbiased within-checkpoint variance).

This file travels into every SANE Hub repository with the weight processor (`processing_sane.py`, for
`trust_remote_code`), so it imports only the standard library, torch, transformers and its siblings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .layout import TokenLayout, load_processor_part


logger = logging.getLogger(__name__)

NORMALIZATION_MODES = ("standardize", "none")
NORMALIZATION_FORMAT_VERSION = 1
# The sidecar that held a SANE's normalization before its weight processor (`preprocessor_config.json`) existed.
SANE_NORMALIZATION_NAME = "sane_normalization.json"
# Values per block of `fit` and `normalize` on CPU (2 MB in float64): each op of a block runs on cache-resident
# data instead of streaming whole checkpoints through memory once per op, which made both several times faster on
# a ResNet-18 checkpoint (15.5M values; BENCHMARKS.md, "ResNet-18 at full size", benchmarks/bench_scale.py).
_BLOCK_VALUES = 1 << 18


def _blocks(num_rows: int, num_tokens: int, token_size: int) -> Iterator[tuple[slice, slice]]:
    """`(rows, tokens)` slices covering `[num_rows, num_tokens, token_size]` in blocks of ~`_BLOCK_VALUES` values:
    whole checkpoints when they are small, else token ranges of one checkpoint."""
    tokens_per_block = max(1, _BLOCK_VALUES // token_size)
    if tokens_per_block >= num_tokens:
        rows = tokens_per_block // num_tokens
        for lo in range(0, num_rows, rows):
            yield slice(lo, min(lo + rows, num_rows)), slice(0, num_tokens)
        return
    for row in range(num_rows):
        for lo in range(0, num_tokens, tokens_per_block):
            yield slice(row, row + 1), slice(lo, min(lo + tokens_per_block, num_tokens))


@dataclass
class TokenNormalization:
    """Per-layer mean/std of a zoo, and the maps to and from standardized tokens.

    Args:
        layer_names (`list[str]`): the layout's layer names, in order (checked against the layout on use).
        mean (`list[float]`): per-layer mean.
        std (`list[float]`): per-layer standard deviation (never zero).
        mode (`str`, *optional*, defaults to `"standardize"`): `"standardize"` or `"none"` (identity).
        num_checkpoints (`int`, *optional*): how many checkpoints the statistics were fitted on.

    Example:

    ```python
    >>> norm = TokenNormalization.fit(train_tokens, layout)        # [N, S, T] or an iterable of batches
    >>> x = norm.normalize(tokens, layout)                          # what SANE is trained on
    >>> torch.allclose(norm.denormalize(x, layout), tokens)
    True
    ```
    """

    layer_names: list[str]
    mean: list[float]
    std: list[float]
    mode: str = "standardize"
    num_checkpoints: int | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in NORMALIZATION_MODES:
            raise ValueError(f"Normalization `mode` must be one of {NORMALIZATION_MODES}, got {self.mode!r}.")
        if not (len(self.layer_names) == len(self.mean) == len(self.std)):
            raise ValueError(
                f"Normalization has {len(self.layer_names)} layer names, {len(self.mean)} means and "
                f"{len(self.std)} stds; expected one of each per layer."
            )
        for name, m, s in zip(self.layer_names, self.mean, self.std):
            if not (math.isfinite(m) and math.isfinite(s) and s > 0):
                raise ValueError(
                    f"Normalization of layer {name!r} has mean {m} and std {s}; expected finite, std > 0."
                )

    # --------------------------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        tokens: torch.Tensor | Iterable[torch.Tensor],
        layout: TokenLayout,
        mode: str = "standardize",
        min_std: float = 1e-8,
    ) -> TokenNormalization:
        """Fit per-layer statistics on (train-split) tokens.

        Args:
            tokens (`torch.Tensor` or an iterable of them): `[N, S, T]` raw (unnormalized) tokens, or batches of
                them (streamed: nothing but per-layer sums is kept).
            layout (`TokenLayout`): the layout the tokens were made with.
            mode (`str`, *optional*, defaults to `"standardize"`): `"standardize"` or `"none"`.
            min_std (`float`, *optional*, defaults to 1e-8): a layer whose std is below this (e.g. a constant
                layer) gets std 1, so the map stays invertible.
        """
        names = [layer.name for layer in layout.layers]
        if mode == "none":
            return cls(names, [0.0] * len(names), [1.0] * len(names), mode="none")
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"Normalization `mode` must be one of {NORMALIZATION_MODES}, got {mode!r}.")
        batches = [tokens] if isinstance(tokens, torch.Tensor) else tokens
        num_layers = layout.num_layers
        mean_sum = torch.zeros(num_layers, dtype=torch.float64)
        var_sum = torch.zeros(num_layers, dtype=torch.float64)
        count = 0
        mask = layout.mask.to(torch.float64)
        token_layer = layout.token_layer
        values_per_layer = torch.zeros(num_layers, dtype=torch.float64).index_add_(0, token_layer, mask.sum(-1))
        work = torch.empty(max(_BLOCK_VALUES, layout.token_size), dtype=torch.float64)  # one block (`_blocks`)
        for batch in batches:
            if batch.ndim == 2:
                batch = batch.unsqueeze(0)
            if tuple(batch.shape[1:]) != (layout.num_tokens, layout.token_size):
                raise ValueError(
                    f"Expected tokens of shape [N, {layout.num_tokens}, {layout.token_size}] for this layout, "
                    f"got {list(batch.shape)}."
                )
            # Per-token float64 sums of values and squares, block by block through one small float64 buffer (a
            # ResNet-18 checkpoint is 124 MB in float64: whole-checkpoint temporaries cost page faults, memory and
            # a trip through DRAM per op). Each token's sum is the same reduction of the same T values as on the
            # whole tensor, and the per-layer index_add_ below runs in token order as before: the same bits.
            token_sums = torch.empty(batch.shape[0], layout.num_tokens, dtype=torch.float64)
            token_squares = torch.empty_like(token_sums)
            for rows, span in _blocks(batch.shape[0], layout.num_tokens, layout.token_size):
                block = batch[rows, span]
                x = work[: block.numel()].view(block.shape).copy_(block).mul_(mask[span])
                torch.sum(x, -1, out=token_sums[rows, span])
                torch.sum(x.square_(), -1, out=token_squares[rows, span])
            sums = torch.zeros(batch.shape[0], num_layers, dtype=torch.float64).index_add_(1, token_layer, token_sums)
            squares = torch.zeros_like(sums).index_add_(1, token_layer, token_squares)
            means = sums / values_per_layer
            # Unbiased within-checkpoint variance, as torch.std in SANE §1.8; a single value has no spread.
            dof = (values_per_layer - 1).clamp(min=1)
            variances = ((squares - values_per_layer * means.square()) / dof).clamp(min=0)
            if not torch.isfinite(means).all() or not torch.isfinite(variances).all():
                raise ValueError("Cannot fit a normalization on tokens with NaN/Inf values.")
            mean_sum += means.sum(0)
            var_sum += variances.sum(0)
            count += batch.shape[0]
        if count == 0:
            raise ValueError("Cannot fit a normalization on zero checkpoints (is the train split empty?).")
        mean = (mean_sum / count).tolist()
        std = (var_sum / count).sqrt().tolist()
        for i, s in enumerate(std):
            if not s >= min_std:
                logger.warning("Layer %r has std %.3g < %.3g over the fitting set; using std 1.", names[i], s, min_std)
                std[i] = 1.0
        return cls(names, mean, std, mode=mode, num_checkpoints=count)

    # ------------------------------------------------------------------------------------------------- applying
    def _per_token(self, layout: TokenLayout, device: torch.device, dtype: torch.dtype):
        names = [layer.name for layer in layout.layers]
        if names != self.layer_names:
            diff = next(
                (f"layer {i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(self.layer_names, names)) if a != b),
                f"{len(self.layer_names)} vs {len(names)} layers",
            )
            raise ValueError(f"Normalization does not match the token layout ({diff}).")
        key = (device, dtype)
        if key not in self._cache:
            index = layout.token_layer
            mean = torch.tensor(self.mean, dtype=torch.float64)[index].to(device=device, dtype=dtype)
            std = torch.tensor(self.std, dtype=torch.float64)[index].to(device=device, dtype=dtype)
            self._cache[key] = (mean[:, None], std[:, None], ~layout.mask.to(device))  # padding: True
        return self._cache[key]

    def _check(self, tokens: torch.Tensor, layout: TokenLayout) -> None:
        if tuple(tokens.shape[-2:]) != (layout.num_tokens, layout.token_size):
            raise ValueError(
                f"Expected tokens of shape [..., {layout.num_tokens}, {layout.token_size}] for this layout, "
                f"got {list(tokens.shape)}."
            )

    def normalize(self, tokens: torch.Tensor, layout: TokenLayout, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Standardize `[..., S, T]` tokens layer by layer; padding stays zero.

        Args:
            tokens (`torch.Tensor`): `[..., S, T]` raw tokens.
            layout (`TokenLayout`): the layout the tokens were made with.
            out (`torch.Tensor`, *optional*): a contiguous tensor of the same shape to write the result into (it may
                be `tokens` itself). The arithmetic is done in the dtype of `tokens` and rounded to `out`'s dtype, so
                `normalize(x, layout, out=y)` equals `normalize(x, layout).to(y.dtype)` bit for bit.

        Returns:
            `torch.Tensor`: the normalized tokens (`out` when given).
        """
        self._check(tokens, layout)
        if out is not None and (tuple(out.shape) != tuple(tokens.shape) or not out.is_contiguous()):
            raise ValueError(
                f"`out` must be a contiguous tensor of the tokens' shape {list(tokens.shape)}, got "
                f"{list(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'}."
            )
        if self.mode == "none":
            return tokens.clone() if out is None else out.copy_(tokens)
        mean, std, padding = self._per_token(layout, tokens.device, tokens.dtype)
        if tokens.device.type != "cpu" or tokens.requires_grad:
            # Whole-tensor ops (blocks would cost a launch each on an accelerator, and `out=` has no autograd); in
            # place after the first op: one fresh output instead of two (same arithmetic, same bits).
            result = (tokens - mean).div_(std).masked_fill_(padding, 0)
            return result if out is None else out.copy_(result)
        if out is None:
            out = torch.empty(tokens.shape, dtype=tokens.dtype, device=tokens.device)
        # Block by block (`_BLOCK_VALUES`), so the three ops of a block work on cache-resident data. Elementwise
        # ops: the same bits as on the whole tensor.
        S, T = layout.num_tokens, layout.token_size
        source, target = tokens.reshape(-1, S, T), out.view(-1, S, T)
        scratch = None if out.dtype == tokens.dtype else torch.empty(max(_BLOCK_VALUES, T), dtype=tokens.dtype)
        for rows, span in _blocks(source.shape[0], S, T):
            destination = target[rows, span]
            block = destination if scratch is None else scratch[: destination.numel()].view(destination.shape)
            torch.sub(source[rows, span], mean[span], out=block).div_(std[span]).masked_fill_(padding[span], 0)
            if block is not destination:
                destination.copy_(block)
        return out

    def denormalize(self, tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Inverse of `normalize` (up to float rounding); padding is set to zero."""
        self._check(tokens, layout)
        if self.mode == "none":
            return tokens.masked_fill(~layout.mask.to(tokens.device), 0)
        mean, std, padding = self._per_token(layout, tokens.device, tokens.dtype)
        return (tokens * std + mean).masked_fill_(padding, 0)

    # ---------------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "format_version": NORMALIZATION_FORMAT_VERSION,
            "mode": self.mode,
            "num_checkpoints": self.num_checkpoints,
            "layers": {name: {"mean": m, "std": s} for name, m, s in zip(self.layer_names, self.mean, self.std)},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> TokenNormalization:
        """Read `to_dict` output, or the original SANE's `dataset_normalization_<split>.json` (`{key: {mean, std}}`)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"A normalization must be a JSON object, got {type(data).__name__}.")
        if "layers" in data:
            version = data.get("format_version")
            if version != NORMALIZATION_FORMAT_VERSION:
                raise ValueError(
                    f"Normalization has format_version {version!r}; this sane_hf reads {NORMALIZATION_FORMAT_VERSION}."
                )
            layers = data["layers"]
            mode = data.get("mode", "standardize")
        else:  # the original's layout: {"mode": "standardize", "<key>": {"mean": .., "std": ..}, ...}
            mode = data.get("mode", "standardize")
            layers = {k: v for k, v in data.items() if k != "mode"}
        try:
            names = list(layers)
            mean = [float(layers[n]["mean"]) for n in names]
            std = [float(layers[n]["std"]) for n in names]
        except (KeyError, TypeError) as err:
            raise ValueError(f"Normalization entries need 'mean' and 'std' fields ({err!r}).") from None
        return cls(names, mean, std, mode=mode, num_checkpoints=data.get("num_checkpoints"))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **hub_options) -> TokenNormalization:
        """The normalization of a SANE's weight processor (`TokenLayout.from_pretrained` reads its layout the same
        way): a folder or Hub repository id, through the Hub cache, or a JSON file."""
        part = load_processor_part(source, "normalization", SANE_NORMALIZATION_NAME, required=True, **hub_options)
        return cls.from_dict(part)


def token_transform_for(processor: Any, zoo: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Map a zoo's tokens into the normalization a SANE was trained with, when the two differ (else None).

    A SANE's weight processor carries the normalization of its pretraining zoo; encoding another zoo's checkpoints
    with it (to embed them, or as anchors to generate from) must use those statistics, not the zoo's own, and
    whatever it decodes is then de-normalized with them too.

    Args:
        processor (`SaneProcessor`, *optional*): the SANE's weight processor (reads `layout` and `normalization`);
            `None` for a SANE saved without one.
        zoo (`SaneZooDataset`): reads `layout`, `normalization` and `info.tokens_normalized`.
    """
    layout = zoo.layout
    if processor is None:
        return None
    if processor.layout != layout:
        logger.warning("The SANE model was pretrained on another token layout than this dataset's.")
    model_norm = processor.normalization
    if model_norm is None:
        return None
    zoo_norm = zoo.normalization if zoo.info.tokens_normalized else None
    if zoo_norm is not None and (
        model_norm.mode == zoo_norm.mode
        and _all_close(model_norm.mean, zoo_norm.mean)
        and _all_close(model_norm.std, zoo_norm.std)
    ):
        return None
    if model_norm.layer_names != [layer.name for layer in layout.layers]:
        logger.warning("The SANE normalization does not match the dataset's layers; using the dataset's tokens as is.")
        return None
    logger.info("Re-normalizing the dataset's tokens with the SANE model's normalization statistics.")

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        if zoo_norm is not None:
            tokens = zoo_norm.denormalize(tokens, layout)
        return model_norm.normalize(tokens, layout)

    return transform


def _all_close(values: Sequence[float], reference: Sequence[float], rel_tol: float = 1e-6) -> bool:
    return len(values) == len(reference) and all(
        math.isclose(a, b, rel_tol=rel_tol, abs_tol=0) for a, b in zip(values, reference)
    )
