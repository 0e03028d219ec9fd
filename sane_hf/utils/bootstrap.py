"""Bootstrap intervals over *models*, not checkpoints.

A zoo split holds a few dozen models with many checkpoints each; checkpoints of one model are far from independent,
so a bootstrap that resamples checkpoints gives intervals that are much too narrow. Here whole models are resampled
with replacement, with all of their rows (percentile intervals, a fixed number of resamples, seeded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


def bootstrap_over_groups(
    groups: Sequence | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic(rows)` when the groups (models) are resampled with replacement.

    Args:
        groups (`Sequence`): the group (model id) of every row.
        statistic (`Callable[[np.ndarray], float]`): the statistic of a resample, given the row indices it holds
            (a row appears once per time its group was drawn).
        num_resamples (`int`, *optional*, defaults to 1000): bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.95): coverage of the interval.
        seed (`int`, *optional*, defaults to 0): seed of the resampling.

    Returns:
        `(low, high)`; NaN resamples (e.g. an R² of a resample with one target value) are left out, and
        `(nan, nan)` is returned when no group or no finite resample remains.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"`num_resamples` must be a positive int, got {num_resamples!r}.")
    groups = np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    if len(names) == 0:
        return float("nan"), float("nan")
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        drawn = rng.integers(0, len(names), size=len(names))
        value = float(statistic(np.concatenate([rows_of[g] for g in drawn])))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(
    values: Sequence[float],
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of the mean of one value per model (each model its own group)."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_over_groups(
        np.arange(len(values)), lambda rows: values[rows].mean(), num_resamples, confidence, seed
    )
