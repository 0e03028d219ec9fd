"""Sampling new models in SANE's latent space: anchors, KDE, diagonal Gaussian, subsampling and bootstrapping (docs/method.md#samplers).

A generated model starts as a latent sequence `[S, L]` (one latent per token). The samplers here work on batches of
such sequences and are vectorized over samples and tokens: one draw of anchor indices and one draw of noise for the
whole batch, instead of the original's one scikit-learn KDE per token (53,704 fits for a ResNet-18).

Randomness is an argument: every sampler takes a `torch.Generator`, so a seeded
generator reproduces a draw exactly.

KDE semantics (docs/method.md#samplers). The original fits a KDE per token with a fresh `random_state=42` each time, so
every token of a sample gets the *same* anchor index and the *same* standard-normal draw (docs/method.md#departures-at-a-glance).
The modes here:

- `"token"` (default): one anchor index per sample, Gaussian noise independent per sample, token and dimension.
  This is what a per-token KDE with independent seeds would give if all tokens came from the same anchor, and the
  original's `"joint"` mode in distribution.
- `"original_token"`: the original's token mode, `z_r[s] = a[i_r, s] + h * eps_r` with one `eps_r` in R^L shared by
  all tokens of sample r. With `random_state` it reproduces scikit-learn's numbers exactly.
- `"original_individual"`: the original's individual mode, one scalar `e_r` shared by all S*L entries.
- `"mixed"`: a true per-token KDE with independent seeds: anchor index *and* noise drawn per token, so a sample
  mixes tokens of different anchors.
- `"anchor_covariance"`: a KDE whose kernel has the anchors' covariance (the usual multivariate KDE, a bandwidth
  matrix `h^2 * Cov`, instead of `h^2 * I`): `z_r = a[i_r] + h * sum_j e_rj (a[j] - mean(a)) / sqrt(N - 1)` with
  `e_r ~ N(0, I_N)`. Samples move along the directions in which the anchors differ from each other, over the whole
  sequence at once, rather than in every latent direction alike.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..constants import canonical_split
from ..utils.io import json_safe
from ..zoo_models import get_zoo_architecture
from .configs import KDE_MODES


logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------------------------
# Containers
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class LatentSamples:
    """A batch of sampled latent sequences and where they come from.

    Args:
        latents (`torch.FloatTensor` of shape `(num_samples, seq_len, latent_dim)`):
            The sampled per-token latents.
        anchor_index (`torch.LongTensor` of shape `(num_samples,)`):
            The anchor each sample belongs to: the anchor it was drawn around (KDE), the anchor contributing most of
            its tokens (`"mixed"` KDE), or its nearest anchor in latent space (diagonal Gaussian). The generated model
            inherits that anchor's architecture arguments (e.g. its activation).
        scores (`torch.FloatTensor` of shape `(num_samples,)`, *optional*):
            Selection scores (e.g. accuracy on task images), when the samples were scored.
    """

    latents: torch.Tensor
    anchor_index: torch.Tensor
    scores: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def select(self, index: torch.Tensor | Sequence[int]) -> LatentSamples:
        """The samples at `index` (in that order)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return LatentSamples(
            latents=self.latents[index],
            anchor_index=self.anchor_index[index],
            scores=None if self.scores is None else self.scores[index],
        )

    @staticmethod
    def cat(parts: Sequence[LatentSamples]) -> LatentSamples:
        """Concatenate batches of samples (scores are kept only when every part has them)."""
        scores = None
        if all(part.scores is not None for part in parts):
            scores = torch.cat([part.scores for part in parts])
        return LatentSamples(
            latents=torch.cat([part.latents for part in parts]),
            anchor_index=torch.cat([part.anchor_index for part in parts]),
            scores=scores,
        )


@dataclass
class AnchorSet:
    """The anchor models of a generation run (docs/method.md#samplers): zoo checkpoints and their haloed embeddings.

    Args:
        tokens (`torch.FloatTensor` of shape `(num_anchors, seq_len, token_size)`):
            The anchors' tokens as stored in the zoo (normalized when the zoo is); `SaneGenerator` maps them
            into the SANE's normalization when that differs from the zoo's (`token_transform_for`).
        latents (`torch.FloatTensor` of shape `(num_anchors, seq_len, latent_dim)`, *optional*):
            Their haloed embeddings (`SaneModel.haloed_encode`); set by `embed_anchors`.
        model_ids (`list[str]`): zoo model ids.
        epochs (`list[int]`): checkpoint epochs.
        values (`list[float]`): the ranking property of each anchor.
        model_kwargs (`list[dict]`): constructor arguments of each anchor's architecture (`build_zoo_model`).
        properties (`list[dict]`): all scalar properties of each anchor checkpoint.
        split (`str`): the zoo split they come from.
        property_name (`str`): the ranking property.
    """

    tokens: torch.Tensor
    model_ids: list[str]
    epochs: list[int]
    values: list[float]
    model_kwargs: list[dict[str, Any]]
    properties: list[dict[str, Any]] = field(default_factory=list)
    split: str = "train"
    property_name: str = "val_acc"
    latents: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (without tensors)."""
        return {
            "split": self.split,
            "property": self.property_name,
            "anchors": [
                {"model_id": m, "epoch": e, self.property_name: v, "model_kwargs": k}
                for m, e, v, k in zip(self.model_ids, self.epochs, self.values, self.model_kwargs)
            ],
        }


# -------------------------------------------------------------------------------------------------------------------
# Anchors
# -------------------------------------------------------------------------------------------------------------------


def _matches(value: Any, wanted: Any) -> bool:
    value = json_safe(value, strict=False)
    if isinstance(wanted, int | float) and not isinstance(wanted, bool) and isinstance(value, int | float):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return value == wanted


def select_anchor_rows(
    split_dataset: Any,
    num_anchors: int,
    property_name: str = "val_acc",
    epoch: int | None = None,
    filters: Mapping[str, Any] | None = None,
    largest: bool = True,
) -> list[int]:
    """Row indices of the anchor checkpoints: the best `num_anchors` models by a property at one epoch.

    Args:
        split_dataset (`datasets.Dataset`):
            One split of a tokenized zoo (`SaneZooDataset.splits[split]`), with `model_id` and `epoch` columns.
        num_anchors (`int`):
            How many anchors; a `ValueError` names the number available when fewer checkpoints qualify.
        property_name (`str`, *optional*, defaults to `"val_acc"`):
            Column ranking the models.
        epoch (`int`, *optional*):
            Checkpoint epoch; defaults to the largest epoch in the split.
        filters (`Mapping[str, Any]`, *optional*):
            Required column values, e.g. `{"activation": "relu"}`.
        largest (`bool`, *optional*, defaults to `True`):
            Rank descending (accuracies) or ascending (losses).

    Returns:
        `list[int]`: row indices into `split_dataset`, best first (ties broken by model id, so the choice is
        deterministic).

    Raises:
        `ValueError`: a column is missing, or fewer than `num_anchors` checkpoints match.
    """
    if not isinstance(num_anchors, int) or num_anchors < 1:
        raise ValueError(f"`num_anchors` must be a positive int, got {num_anchors!r}.")
    filters = dict(filters or {})
    columns = list(split_dataset.column_names)
    needed = list(dict.fromkeys(["model_id", "epoch", property_name, *filters]))
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"The zoo split has no column(s) {missing} needed to choose anchors; its columns are {columns}."
        )
    meta = split_dataset.select_columns(needed).with_format(None)[:]
    epochs = [int(e) for e in meta["epoch"]]
    if not epochs:
        raise ValueError("The zoo split is empty; no anchors can be chosen.")
    target_epoch = max(epochs) if epoch is None else int(epoch)
    candidates = []
    for row, (model_id, row_epoch, value) in enumerate(zip(meta["model_id"], epochs, meta[property_name])):
        if row_epoch != target_epoch or value is None:
            continue
        value = float(json_safe(value, strict=False))
        if not math.isfinite(value):
            continue
        if any(not _matches(meta[key][row], wanted) for key, wanted in filters.items()):
            continue
        candidates.append((-value if largest else value, str(model_id), row))
    if not candidates:
        available = sorted(set(epochs))
        raise ValueError(
            f"No checkpoint of the split matches epoch {target_epoch} and filters {filters} with a finite "
            f"{property_name!r}; available epochs: {available[:10]}{' ...' if len(available) > 10 else ''}."
        )
    candidates.sort()
    if len(candidates) < num_anchors:
        # An error, not fewer anchors: a silently smaller anchor set changes what every sampler draws from.
        raise ValueError(
            f"`num_anchors`={num_anchors}, but only {len(candidates)} checkpoint(s) of the split qualify as anchors "
            f"(epoch {target_epoch}, filters {filters}, finite {property_name!r}); use --num_anchors "
            f"{len(candidates)} or fewer, or another split/epoch."
        )
    return [row for _, _, row in candidates[:num_anchors]]


def anchor_model_kwargs(
    architecture: str, base_kwargs: Mapping[str, Any] | None, properties: Mapping[str, Any]
) -> dict[str, Any]:
    """Constructor arguments of one zoo member: the zoo's reference arguments overridden by the member's properties.

    A zoo's `meta/info.json` stores the reference checkpoint's `model_kwargs`; per-model generating factors that are
    constructor arguments (`activation`, `dropout`, `init`, ...) vary between members and are stored as properties.
    A decoded sample must be rebuilt with its anchor's activation, or its weights compute another function.
    """

    accepted = set(get_zoo_architecture(architecture)._hub_mixin_init_parameters) - {"self"}
    kwargs = dict(base_kwargs or {})
    for key, value in properties.items():
        value = json_safe(value, strict=False)
        if key in accepted and value is not None:
            kwargs[key] = value
    return kwargs


def load_anchors(
    zoo: Any,
    split: str = "train",
    num_anchors: int = 10,
    property_name: str = "val_acc",
    epoch: int | None = None,
    filters: Mapping[str, Any] | None = None,
) -> AnchorSet:
    """Choose anchors in a tokenized zoo (`select_anchor_rows`) and read their tokens and properties.

    Args:
        zoo (`SaneZooDataset`): the tokenized zoo (`sane_hf.data.load_zoo_dataset`).
        split (`str`, *optional*, defaults to `"train"`): the zoo split.
        num_anchors, property_name, epoch, filters: see `select_anchor_rows`.
    """
    split = canonical_split(split)  # "val" (format version 1's name) is "validation"
    if split not in zoo.splits:
        raise ValueError(f"The zoo has no split {split!r}; it has {list(zoo.splits)}.")
    if not zoo.info.architecture:
        raise ValueError(
            "The zoo does not name its architecture (meta/info.json `architecture`), so generated weights cannot be "
            "loaded into a network; convert the zoo with a registered zoo architecture."
        )
    dataset = zoo.splits[split]
    rows = select_anchor_rows(dataset, num_anchors, property_name, epoch=epoch, filters=filters)
    selected = dataset.select(rows).with_format("torch")
    tokens = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in selected["tokens"]])
    properties = []
    scalar_columns = [c for c in selected.column_names if c != "tokens"]
    plain = selected.select_columns(scalar_columns).with_format(None)
    for row in range(len(rows)):
        properties.append({c: json_safe(plain[row][c], strict=False) for c in scalar_columns})
    return AnchorSet(
        tokens=tokens,
        model_ids=[str(p["model_id"]) for p in properties],
        epochs=[int(p["epoch"]) for p in properties],
        values=[float(p[property_name]) for p in properties],
        model_kwargs=[anchor_model_kwargs(zoo.info.architecture, zoo.info.model_kwargs, p) for p in properties],
        properties=properties,
        split=split,
        property_name=property_name,
    )


def embed_anchors(
    sane: Any, anchors: AnchorSet, positions: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """Haloed embeddings `[N_a, S, L]` of the anchors (docs/method.md#samplers); also stored in `anchors.latents`."""
    latents = sane.haloed_encode(anchors.tokens, positions, batch_size=batch_size).float()
    anchors.latents = latents
    return latents


# -------------------------------------------------------------------------------------------------------------------
# Samplers
# -------------------------------------------------------------------------------------------------------------------


def _check_anchor_latents(anchor_latents: torch.Tensor) -> None:
    if not isinstance(anchor_latents, torch.Tensor) or anchor_latents.ndim != 3 or anchor_latents.shape[0] < 1:
        shape = tuple(anchor_latents.shape) if isinstance(anchor_latents, torch.Tensor) else type(anchor_latents)
        raise ValueError(f"`anchor_latents` must have shape (num_anchors >= 1, seq_len, latent_dim), got {shape}.")


def _check_num_samples(num_samples: int) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(high, shape, generator=generator, device=device).to(like.device)


def sample_kde(
    anchor_latents: torch.Tensor,
    num_samples: int,
    bandwidth: float,
    mode: str = "token",
    generator: torch.Generator | None = None,
    random_state: int | None = None,
) -> LatentSamples:
    """Kernel density sampling around anchor latents with a Gaussian kernel (SANE_KDE, docs/method.md#samplers).

    Args:
        anchor_latents (`torch.FloatTensor` of shape `(num_anchors, seq_len, latent_dim)`):
            Haloed anchor embeddings (`embed_anchors`).
        num_samples (`int`):
            Number of latent sequences to draw.
        bandwidth (`float`):
            Kernel bandwidth `h` (standard deviation of the noise; docs/quality_study.md studies it).
        mode (`str`, *optional*, defaults to `"token"`):
            `"token"`, `"original_token"`, `"original_individual"` or `"mixed"` (see the module docstring).
        generator (`torch.Generator`, *optional*):
            Source of every random draw; seed it to reproduce the samples (mainly used for testing purposes).
        random_state (`int`, *optional*):
            Only for the `"original_*"` modes: draw with `numpy.random.RandomState(random_state)` exactly as
            scikit-learn's `KernelDensity.sample(random_state=...)` does, reproducing the original's numbers
            (it used 42). Ignores `generator`.

    Returns:
        `LatentSamples` with `anchor_index` the anchor each sample was drawn around (for `"mixed"`, the anchor that
        contributed most of its tokens).
    """
    _check_anchor_latents(anchor_latents)
    _check_num_samples(num_samples)
    if mode not in KDE_MODES:
        raise ValueError(f"`mode` must be one of {list(KDE_MODES)}, got {mode!r}.")
    if not isinstance(bandwidth, int | float) or not math.isfinite(bandwidth) or bandwidth < 0:
        raise ValueError(f"`bandwidth` must be a finite float >= 0, got {bandwidth!r}.")
    num_anchors, seq_len, latent_dim = anchor_latents.shape

    if random_state is not None:
        if mode not in ("original_token", "original_individual"):
            raise ValueError(f"`random_state` reproduces the original's modes only, not mode={mode!r}.")
        return _sample_kde_sklearn_stream(anchor_latents, num_samples, bandwidth, mode, random_state)

    if mode == "mixed":
        # Every token picks its own anchor, as independent per-token KDEs would.
        token_anchor = _randint(num_anchors, (num_samples, seq_len), generator, anchor_latents)
        base = anchor_latents[token_anchor, torch.arange(seq_len, device=anchor_latents.device)]
        noise = _randn((num_samples, seq_len, latent_dim), generator, anchor_latents)
        return LatentSamples(latents=base + bandwidth * noise, anchor_index=torch.mode(token_anchor, dim=1).values)

    anchor_index = _randint(num_anchors, (num_samples,), generator, anchor_latents)
    if mode == "anchor_covariance":
        if num_anchors < 2:
            raise ValueError(
                "`mode='anchor_covariance'` needs at least two anchors (their covariance shapes the kernel)."
            )
        deviations = (anchor_latents - anchor_latents.mean(dim=0)) / math.sqrt(num_anchors - 1)
        weights = _randn((num_samples, num_anchors), generator, anchor_latents)
        noise = torch.einsum("rn,nsl->rsl", weights, deviations)
        return LatentSamples(latents=anchor_latents[anchor_index] + bandwidth * noise, anchor_index=anchor_index)
    noise_shape = {
        "token": (num_samples, seq_len, latent_dim),
        "original_token": (num_samples, 1, latent_dim),  # one eps_r in R^L shared by every token
        "original_individual": (num_samples, 1, 1),  # one scalar shared by all S*L entries
    }[mode]
    noise = _randn(noise_shape, generator, anchor_latents)
    return LatentSamples(latents=anchor_latents[anchor_index] + bandwidth * noise, anchor_index=anchor_index)


def _sample_kde_sklearn_stream(
    anchor_latents: torch.Tensor, num_samples: int, bandwidth: float, mode: str, random_state: int
) -> LatentSamples:
    # scikit-learn's gaussian `KernelDensity.sample`: u ~ U(0,1)^n, i = floor(u * N), then
    # `rng.normal(data[i], h)`: one legacy Gaussian per output entry of one KDE, in C order, in float64. Every KDE of
    # the original restarts the stream at `random_state`, so all tokens (or all entries) see the same draws.
    num_anchors = anchor_latents.shape[0]
    rng = np.random.RandomState(random_state)
    u = rng.uniform(0, 1, size=num_samples)
    index = (u * num_anchors).astype(np.int64)
    width = anchor_latents.shape[-1] if mode == "original_token" else 1
    gauss = rng.normal(np.zeros((num_samples, width)), 1.0)  # the legacy Gaussian stream, unit scale
    anchors = anchor_latents.detach().to("cpu", torch.float64).numpy()
    eps = gauss[:, None, :]  # [n, 1, L] or [n, 1, 1]
    # `normal(loc, scale)` computes loc + scale * gauss in float64, as below.
    latents = anchors[index] + bandwidth * eps
    return LatentSamples(
        latents=torch.from_numpy(latents).to(device=anchor_latents.device, dtype=anchor_latents.dtype),
        anchor_index=torch.from_numpy(index).to(anchor_latents.device),
    )


def nearest_anchor(latents: torch.Tensor, anchor_latents: torch.Tensor) -> torch.Tensor:
    """Index `[n]` of the nearest anchor (L2 over the whole latent sequence) of every sample."""
    distances = torch.cdist(latents.flatten(1).double(), anchor_latents.flatten(1).double())
    return distances.argmin(dim=1)


def sample_diagonal_gaussian(
    anchor_latents: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> LatentSamples:
    """Fit a mean and std per token and latent dimension over the anchors, and sample each entry independently, once.

    A Gaussian with diagonal covariance over the anchors' latent sequences. This is *not* the paper's SANE_GAUSS,
    which bootstraps (repeated sampling and selection by score) from a Gaussian prior fitted on the anchor
    embeddings; here nothing is scored or refitted.

    Args:
        anchor_latents (`torch.FloatTensor` of shape `(num_anchors, seq_len, latent_dim)`):
            Haloed anchor embeddings; with one anchor the std is 0 and every sample is that anchor.
        num_samples (`int`):
            Number of latent sequences to draw.
        generator (`torch.Generator`, *optional*):
            Source of the noise (mainly used for testing purposes).

    Returns:
        `LatentSamples` whose `anchor_index` is each sample's nearest anchor.
    """
    _check_anchor_latents(anchor_latents)
    _check_num_samples(num_samples)
    mean = anchor_latents.mean(dim=0)
    std = anchor_latents.std(dim=0) if anchor_latents.shape[0] > 1 else torch.zeros_like(mean)
    noise = _randn((num_samples, *mean.shape), generator, anchor_latents)
    latents = mean + std * noise
    return LatentSamples(latents=latents, anchor_index=nearest_anchor(latents, anchor_latents))


def sample_gaussian(
    anchor_latents: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> LatentSamples:
    """Deprecated name of `sample_diagonal_gaussian` (it is not the paper's SANE_GAUSS)."""
    warnings.warn(
        "`sample_gaussian` is deprecated, use `sample_diagonal_gaussian` (the same sampler; it is not the paper's "
        "SANE_GAUSS).",
        FutureWarning,
        stacklevel=2,
    )
    return sample_diagonal_gaussian(anchor_latents, num_samples, generator=generator)


ScoreFunction = Callable[[LatentSamples], torch.Tensor]


def _score(samples: LatentSamples, score_fn: ScoreFunction) -> LatentSamples:
    scores = torch.as_tensor(score_fn(samples), dtype=torch.float64).flatten()
    if scores.shape[0] != len(samples):
        raise ValueError(f"`score_fn` returned {scores.shape[0]} scores for {len(samples)} samples.")
    return LatentSamples(latents=samples.latents, anchor_index=samples.anchor_index, scores=scores)


def top_k(samples: LatentSamples, k: int) -> LatentSamples:
    """The `k` best-scored samples, best first (stable: ties keep their draw order)."""
    if samples.scores is None:
        raise ValueError("top_k needs scored samples (`samples.scores` is None).")
    if not 1 <= k <= len(samples):
        raise ValueError(f"Cannot keep the top {k} of {len(samples)} samples.")
    scores = torch.nan_to_num(samples.scores, nan=-math.inf)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return samples.select(order)


def subsample(candidates: LatentSamples, score_fn: ScoreFunction, keep: int) -> LatentSamples:
    """SANE_SUB (docs/method.md#samplers): score every candidate and keep the best `keep`, best first.

    Args:
        candidates (`LatentSamples`):
            Drawn samples (e.g. `sample_kde(..., num_samples=100)`).
        score_fn (`Callable[[LatentSamples], torch.Tensor]`):
            Returns one score per sample, larger is better; typically decode, BN-condition and measure accuracy on
            train or validation images (never the test split).
        keep (`int`):
            How many to keep.

    Returns:
        `LatentSamples` of length `keep`, sorted by descending score, with `scores` set.
    """
    return top_k(_score(candidates, score_fn), keep)


@dataclass
class BootstrapResult:
    """Output of `bootstrap`: the final samples and, per round, the score statistics of the kept/discarded ones."""

    samples: LatentSamples
    history: list[dict[str, float]]


def bootstrap(
    anchor_latents: torch.Tensor,
    score_fn: ScoreFunction,
    num_models: int,
    iterations: int = 3,
    samples_per_iteration: int = 50,
    keep_top: int = 10,
    bandwidth: float = 0.01,
    mode: str = "token",
    generator: torch.Generator | None = None,
    pool: str = "last",
) -> BootstrapResult:
    """SANE_BOOT (docs/method.md#samplers): sample, score, refit the KDE on the best, repeat.

    Round 1 draws around the anchors; every later round draws around the `keep_top` best samples of the previous
    round. The final models are the true top `num_models` by score (of the last round, or of all rounds with
    `pool="all"`), best first. The original returned the first R samples of the last round, unsorted.

    Args:
        anchor_latents (`torch.FloatTensor` of shape `(num_anchors, seq_len, latent_dim)`):
            Initial anchors.
        score_fn (`Callable[[LatentSamples], torch.Tensor]`):
            One score per sample, larger is better.
        num_models (`int`):
            Number of final samples.
        iterations (`int`, *optional*, defaults to 3):
            Rounds of sample → score → refit.
        samples_per_iteration (`int`, *optional*, defaults to 50):
            Samples drawn per round.
        keep_top (`int`, *optional*, defaults to 10):
            Best samples of a round that become the next round's anchors.
        bandwidth (`float`, *optional*, defaults to 0.01), mode (`str`, *optional*, defaults to `"token"`):
            The KDE (`sample_kde`).
        generator (`torch.Generator`, *optional*):
            Source of every random draw (mainly used for testing purposes).
        pool (`str`, *optional*, defaults to `"last"`):
            `"last"`: the final models are the top of the last round; `"all"`: the top of every scored sample.

    Returns:
        `BootstrapResult`: `samples` (length `num_models`, `anchor_index` pointing at the *initial* anchors, scores
        set) and a per-round `history` of score statistics.
    """
    if pool not in ("last", "all"):
        raise ValueError(f"`pool` must be 'last' or 'all', got {pool!r}.")
    for name, value in (
        ("iterations", iterations),
        ("samples_per_iteration", samples_per_iteration),
        ("keep_top", keep_top),
        ("num_models", num_models),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if keep_top > samples_per_iteration:
        raise ValueError(f"`keep_top`={keep_top} must be <= `samples_per_iteration`={samples_per_iteration}.")
    available = samples_per_iteration * (iterations if pool == "all" else 1)
    if num_models > available:
        raise ValueError(f"Cannot return {num_models} models from {available} scored samples (pool={pool!r}).")
    current = anchor_latents
    current_root = torch.arange(anchor_latents.shape[0], device=anchor_latents.device)
    history, scored_rounds = [], []
    for round_index in range(iterations):
        drawn = sample_kde(current, samples_per_iteration, bandwidth, mode=mode, generator=generator)
        # Track the *initial* anchor of every sample through the rounds: it decides the architecture arguments.
        drawn.anchor_index = current_root[drawn.anchor_index]
        scored = _score(drawn, score_fn)
        scored_rounds.append(scored)
        best = top_k(scored, keep_top)
        order = torch.sort(torch.nan_to_num(scored.scores, nan=-math.inf), descending=True, stable=True).indices
        discarded = scored.scores[order[keep_top:]]
        history.append(
            {
                "round": round_index,
                "best_mean": float(best.scores.mean()),
                "best_std": float(best.scores.std()) if keep_top > 1 else 0.0,
                "discarded_mean": float(discarded.mean()) if discarded.numel() else math.nan,
                "discarded_std": float(discarded.std()) if discarded.numel() > 1 else 0.0,
                "max": float(best.scores[0]),
            }
        )
        logger.info(
            "Bootstrap round %d: kept %d with score %.4f ± %.4f, discarded %.4f.",
            round_index,
            keep_top,
            history[-1]["best_mean"],
            history[-1]["best_std"],
            history[-1]["discarded_mean"],
        )
        current, current_root = best.latents, best.anchor_index
    final_pool = LatentSamples.cat(scored_rounds) if pool == "all" else scored_rounds[-1]
    return BootstrapResult(samples=top_k(final_pool, num_models), history=history)
