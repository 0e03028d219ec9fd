"""Augmentations of token windows and the two views of a SANE training pair (docs/method.md#objective).

A training step sees every window twice. View 1 is the canonical window and view 2 a randomly permuted copy of the
same model (`TokenPermuter`), then each view gets its own noise (and optionally random erasing). This is the
*intended* SANE pipeline: the released configs set `training::view_2_canon` twice, so upstream both views stayed
canonical and the permutation augmentation was silently off (docs/method.md#departures-at-a-glance). Here a view asked to be
permuted is permuted, or the call fails loudly.

Padding stays exactly zero through every augmentation (the mask is applied after each one), and all randomness comes
from an optional `torch.Generator`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..data.windows import sample_windows
from ..tokenization.layout import TokenLayout
from ..tokenization.permutations import TokenPermuter


logger = logging.getLogger(__name__)

# Attempts to draw a rectangle that fits, as torchvision's `RandomErasing.get_params`.
_ERASING_ATTEMPTS = 10


def _check_tokens_and_mask(tokens: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
        raise ValueError(f"`tokens` must be a floating-point tensor, got {getattr(tokens, 'dtype', type(tokens))}.")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise ValueError(
            f"`mask` must be a bool tensor of the shape of `tokens` {list(tokens.shape)}, got "
            f"{getattr(mask, 'dtype', type(mask))} {list(getattr(mask, 'shape', []))}."
        )


def _check_sigma(name: str, sigma: float) -> float:
    if not isinstance(sigma, int | float) or isinstance(sigma, bool) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"`{name}` must be a finite float >= 0, got {sigma!r}.")
    return float(sigma)


def _randn_like(tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)


def multiplicative_noise(
    tokens: torch.Tensor, mask: torch.Tensor, sigma: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`x * (1 + sigma * N(0, 1))` elementwise, padding kept at zero (docs/method.md#objective `NoiseAugmentation`).

    Args:
        tokens (`torch.Tensor` of shape `(..., T)`): token values.
        mask (`torch.BoolTensor` of the same shape): True on real values.
        sigma (`float`, *optional*, defaults to 0.1): noise scale; 0 returns `tokens` unchanged (no random draw).
        generator (`torch.Generator`, *optional*): source of randomness, on the device of `tokens` (mainly used for
            testing purposes).

    Returns:
        A new tensor (or `tokens` itself when `sigma == 0`).
    """
    _check_tokens_and_mask(tokens, mask)
    sigma = _check_sigma("sigma", sigma)
    if sigma == 0:
        return tokens
    noisy = tokens * (1 + sigma * _randn_like(tokens, generator))
    return torch.where(mask, noisy, 0)


def additive_noise(
    tokens: torch.Tensor, mask: torch.Tensor, sigma: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`x + sigma * N(0, 1)` on real values, padding kept at zero (the original's additive variant, docs/method.md#objective).

    Same arguments as `multiplicative_noise`.
    """
    _check_tokens_and_mask(tokens, mask)
    sigma = _check_sigma("sigma", sigma)
    if sigma == 0:
        return tokens
    return torch.where(mask, tokens + sigma * _randn_like(tokens, generator), 0)


@dataclass
class ErasingConfig:
    """Parameters of `random_erasing` (torchvision's `RandomErasing` defaults; upstream `trainset::erase_augment`).

    Args:
        p (`float`, *optional*, defaults to 0.5): probability to erase one rectangle of a sample.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.02, 0.33)`): range of the erased area as a fraction
            of the `W x T` window.
        ratio (`tuple[float, float]`, *optional*, defaults to `(0.3, 3.3)`): range of the rectangle's aspect ratio
            (height / width), sampled log-uniformly.
        value (`float` or `"random"`, *optional*, defaults to 0.0): fill value, or `"random"` for N(0, 1) values.
    """

    p: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float | str = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"Erasing `p` must be in [0, 1], got {self.p!r}.")
        self.scale = tuple(float(s) for s in self.scale)
        self.ratio = tuple(float(r) for r in self.ratio)
        if len(self.scale) != 2 or not 0 <= self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"Erasing `scale` must be (low, high) with 0 <= low <= high <= 1, got {self.scale!r}.")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"Erasing `ratio` must be (low, high) with 0 < low <= high, got {self.ratio!r}.")
        if not (self.value == "random" or isinstance(self.value, int | float)):
            raise ValueError(f"Erasing `value` must be a float or 'random', got {self.value!r}.")


def random_erasing(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float | str = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Erase one random rectangle of the `[W, T]` plane per sample with probability `p`; padding stays zero.

    A vectorized reimplementation of torchvision's `RandomErasing` as upstream applies it to `[..., 1, W, T]`
    (docs/method.md#objective): per sample, up to 10 attempts draw an area `U(scale) * W * T` and a log-uniform aspect ratio;
    the first rectangle that fits (`h < W` and `w < T`) is placed uniformly at random; a sample without a fitting
    attempt is left unchanged.

    Args:
        tokens (`torch.Tensor` of shape `(B, W, T)`): token windows.
        mask (`torch.BoolTensor` of shape `(B, W, T)`): True on real values.
        p, scale, ratio, value: see `ErasingConfig`.
        generator (`torch.Generator`, *optional*): source of randomness, on the device of `tokens` (mainly used for
            testing purposes).

    Returns:
        A new tensor.
    """
    _check_tokens_and_mask(tokens, mask)
    if tokens.ndim != 3:
        raise ValueError(f"`tokens` must have shape [B, W, T], got {list(tokens.shape)}.")
    config = ErasingConfig(p=p, scale=scale, ratio=ratio, value=value)
    batch_size, height, width = tokens.shape
    device = tokens.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)

    # Every draw is made for every sample and attempt, so the random stream does not depend on the data.
    area = float(height * width)
    erase_area = area * (
        config.scale[0] + (config.scale[1] - config.scale[0]) * uniform(batch_size, _ERASING_ATTEMPTS)
    )
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform(batch_size, _ERASING_ATTEMPTS))
    h = torch.sqrt(erase_area * aspect).round().long()
    w = torch.sqrt(erase_area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none; then `apply` is False)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    apply = (uniform(batch_size) < config.p) & fits.any(dim=1)
    top = (uniform(batch_size) * (height - h + 1)).floor().long()
    left = (uniform(batch_size) * (width - w + 1)).floor().long()
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    region = (
        (rows >= top[:, None, None])
        & (rows < (top + h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + w)[:, None, None])
        & apply[:, None, None]
    )
    fill = _randn_like(tokens, generator) if config.value == "random" else float(config.value)
    erased = torch.where(region, fill, tokens)
    return torch.where(mask, erased, 0)


def augment_tokens(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    noise_multiplicative: float = 0.1,
    noise_additive: float = 0.0,
    erase: ErasingConfig | Mapping | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The per-view stack: multiplicative noise, then additive noise, then random erasing (each optional).

    Args:
        tokens (`torch.Tensor` of shape `(B, W, T)`), mask (`torch.BoolTensor`): one view.
        noise_multiplicative (`float`, *optional*, defaults to 0.1): sigma of `multiplicative_noise` (SANE's only
            noise; 0 disables it).
        noise_additive (`float`, *optional*, defaults to 0.0): sigma of `additive_noise`.
        erase (`ErasingConfig` or `dict`, *optional*): random erasing parameters; `None` disables it.
        generator (`torch.Generator`, *optional*): source of randomness (mainly used for testing purposes).
    """
    tokens = multiplicative_noise(tokens, mask, noise_multiplicative, generator)
    tokens = additive_noise(tokens, mask, noise_additive, generator)
    if erase is not None:
        config = erase if isinstance(erase, ErasingConfig) else ErasingConfig(**erase)
        tokens = random_erasing(tokens, mask, config.p, config.scale, config.ratio, config.value, generator=generator)
    return tokens


def make_two_views(
    batch: Mapping[str, torch.Tensor],
    permuter: TokenPermuter | None = None,
    noise_multiplicative: float = 0.1,
    noise_additive: float = 0.0,
    erase: ErasingConfig | Mapping | None = None,
    permute_view_1: bool = False,
    permute_view_2: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Build the two views of a batch of windows (docs/method.md#objective, as intended: view 1 canonical, view 2 permuted).

    For each view, in this order: draw per-sample permutations of every group and permute the window (if asked),
    then multiplicative noise, additive noise and random erasing, each drawn independently per view. The random
    draws happen in that fixed order (view 1 first), so a seeded `generator` reproduces both views exactly.

    Args:
        batch (`Mapping[str, torch.Tensor]`): a window batch: `tokens` `[B, W, T]`, `mask` `[B, W, T]` (bool),
            `positions` `[B, W, 3]`, `start` `[B]` (window starts) and, when a view is permuted, `full_tokens`
            `[B, S, T]` (permuted rows come from outside the window; or a slice of it together with `source_start`
            `[B]`, see `TokenPermuter.apply`). Other entries (e.g. properties) are passed on to both views.
        permuter (`TokenPermuter`, *optional*): needed when a view is permuted.
        noise_multiplicative (`float`, *optional*, defaults to 0.1): see `augment_tokens`.
        noise_additive (`float`, *optional*, defaults to 0.0): see `augment_tokens`.
        erase (`ErasingConfig` or `dict`, *optional*): see `augment_tokens`.
        permute_view_1 (`bool`, *optional*, defaults to `False`): permute view 1 (SANE: canonical).
        permute_view_2 (`bool`, *optional*, defaults to `True`): permute view 2 (SANE's intent; upstream's duplicated
            config key turned it off, docs/method.md#departures-at-a-glance).
        generator (`torch.Generator`, *optional*): source of all randomness, on the device of the tokens (mainly used
            for testing purposes).

    Returns:
        `(view_1, view_2)`: dicts with the batch's entries (minus `full_tokens`/`source_start`) plus `tokens` (the
        augmented window, the model input and, by default, the reconstruction target), `clean_tokens` (the window
        after the permutation but before noise and erasing) and, for a permuted view, `permutations` (group ->
        `[B, size]`). `mask`, `positions` and `start` are shared with the batch: a permutation does not change them.

    Raises:
        `ValueError`: a view is to be permuted but `permuter` or `batch["full_tokens"]` is missing, or the batch is
        malformed.
    """
    for key in ("tokens", "mask", "start"):
        if key not in batch:
            raise ValueError(f"The window batch lacks {key!r}; it has {sorted(batch)}.")
    tokens, mask, start = batch["tokens"], batch["mask"], batch["start"]
    _check_tokens_and_mask(tokens, mask)
    if tokens.ndim != 3:
        raise ValueError(f"`batch['tokens']` must have shape [B, W, T], got {list(tokens.shape)}.")
    batch_size, window_size, _ = tokens.shape
    if not isinstance(start, torch.Tensor) or tuple(start.shape) != (batch_size,):
        raise ValueError(f"`batch['start']` must be a tensor of shape [{batch_size}].")
    passed_on = {k: v for k, v in batch.items() if k not in ("tokens", "full_tokens", "source_start")}

    views = []
    for index, permute in ((1, permute_view_1), (2, permute_view_2)):
        view = dict(passed_on)
        window = tokens
        if permute:
            if permuter is None:
                raise ValueError(
                    f"permute_view_{index}=True needs a `permuter` (TokenPermuter); pass permute_view_{index}=False to "
                    "use the canonical window (the permutation augmentation is then off)."
                )
            if "full_tokens" not in batch:
                raise ValueError(
                    f"permute_view_{index}=True needs `batch['full_tokens']` [B, S, T]: a permuted window reads rows "
                    "from outside the window."
                )
            perms = permuter.sample_permutations(generator, batch_size)
            window = permuter.apply(
                batch["full_tokens"], perms, start, window_size, source_start=batch.get("source_start")
            ).to(tokens.dtype)
            view["permutations"] = perms
        view["clean_tokens"] = window
        view["tokens"] = augment_tokens(window, mask, noise_multiplicative, noise_additive, erase, generator)
        views.append(view)
    return views[0], views[1]


class PretrainingCollator:
    """`collate_fn` turning full checkpoints into the inputs of `SaneForPreTraining`: two views of a random window each.

    Cuts one random window per checkpoint (`sample_windows`), builds the two views (`make_two_views`: view 2
    permuted when a `permuter` is given, independent noise and erasing per view) and stacks them along a view
    dimension, so `SaneForPreTraining(**batch).loss` is the SANE loss of the batch, in a `transformers.Trainer` or any
    loop.

    Args:
        layout (`TokenLayout`): the zoo's layout (positions and mask).
        window_size (`int`): `W` (clipped to the sequence).
        permuter (`TokenPermuter`, *optional*): permute view 2 with a random function-preserving permutation.
        noise_multiplicative / noise_additive (`float`, *optional*, default to 0.1 / 0.0): per-view noise sigma.
        erase_probability (`float`, *optional*, defaults to 0.0): probability of random erasing per view.
        denoise (`bool`, *optional*, defaults to `False`): `labels` are the clean windows (a denoising autoencoder)
            rather than the augmented inputs.
        generator (`torch.Generator`, *optional*): source of all randomness (mainly used for testing purposes).

    Items are `ZooCheckpointDataset` items (`{"tokens": [S, T], ...}`); a batch is `tokens`, `labels`, `mask`
    (`[B, 2, W, T]`) and `positions` (`[B, 2, W, 3]`), view 1 at index 0.

    Example:

    ```python
    >>> zoo = load_zoo_dataset("runs/zoo_ds")
    >>> collator = PretrainingCollator(zoo.layout, window_size=64)
    >>> loader = DataLoader(ZooCheckpointDataset(zoo.splits["train"]), batch_size=32, collate_fn=collator)
    >>> SaneForPreTraining.from_pretrained("runs/sane")(**next(iter(loader))).loss
    ```
    """

    def __init__(
        self,
        layout: TokenLayout,
        window_size: int,
        permuter: TokenPermuter | None = None,
        noise_multiplicative: float = 0.1,
        noise_additive: float = 0.0,
        erase_probability: float = 0.0,
        denoise: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.layout = layout
        self.window_size = min(window_size, layout.num_tokens)
        self.permuter = permuter
        self.noise_multiplicative = _check_sigma("noise_multiplicative", noise_multiplicative)
        self.noise_additive = _check_sigma("noise_additive", noise_additive)
        self.erase = {"p": erase_probability} if erase_probability > 0 else None
        self.denoise = denoise
        self.generator = generator

    def __call__(self, items: list[Mapping]) -> dict[str, torch.Tensor]:
        # Only `tokens` is read: the collator works whatever other columns a Trainer keeps or removes.
        full = torch.stack([item["tokens"] for item in items])
        windows = sample_windows(
            full, self.window_size, self.generator, positions=self.layout.positions, mask=self.layout.mask
        )
        windows["full_tokens"] = full  # what a permuted view gathers rows from
        view_1, view_2 = make_two_views(
            windows,
            permuter=self.permuter,
            noise_multiplicative=self.noise_multiplicative,
            noise_additive=self.noise_additive,
            erase=self.erase,
            permute_view_1=False,
            permute_view_2=self.permuter is not None,
            generator=self.generator,
        )
        target_key = "clean_tokens" if self.denoise else "tokens"
        return {
            "tokens": torch.stack([view_1["tokens"], view_2["tokens"]], dim=1),
            "positions": torch.stack([view_1["positions"], view_2["positions"]], dim=1),
            "mask": torch.stack([view_1["mask"], view_2["mask"]], dim=1),
            "labels": torch.stack([view_1[target_key], view_2[target_key]], dim=1),
        }
