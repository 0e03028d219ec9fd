"""Linear probes that predict model properties from features of their weights (docs/method.md#probes).

* `fit_ridge` is the upstream regression probe: ridge regression in closed form in float64 on `[X, 1]` (the intercept
  column is regularized too), the 17-value alpha grid, alpha chosen by the best validation R², and
  `R² = 1 - mean((y - ŷ)²) / mean((y - ȳ)²)` with `ȳ` the mean of the *evaluated* split (docs/method.md#probes). Rows
  whose target is NaN are dropped per split.
* `fit_classifier` is the probe for categorical properties (docs/method.md#probes): a linear softmax classifier
  (scikit-learn's `LogisticRegression` instead of upstream's 50 epochs of Adam on a `Linear` layer), classes are the
  sorted unique train values, accuracy per split.
* `fit_gradient_boosting` is a non-linear extra (not part of SANE's protocol): gradient boosting on s(W) can
  be far above every linear probe on a digits zoo, so reports show it as a separate row.
* `fit_probe` picks the probe from the target's type (`infer_task`).

Feature standardization (`standardize=True`) centres and scales every feature with the *train* mean and std before
the ridge solve. Upstream does not do it: the features go in raw, so the single alpha grid acts on features of very
different scales (raw weights vs. latents vs. percentiles). With standardization, alpha means the same thing for
every feature set; reports show both.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..constants import SPLIT_NAMES, VALIDATION_SPLIT


logger = logging.getLogger(__name__)

# docs/method.md#probes: the alpha grid of the upstream ridge probe, in its order (ties keep the first, i.e. larger alpha).
RIDGE_ALPHAS = (1e3, 3e2, 1e2, 3e1, 1e1, 3.0, 1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
# Inverse regularization strengths of the classification probe, chosen by validation accuracy.
CLASSIFIER_CS = (1e-2, 1e-1, 1.0, 1e1)
_CLASSIFIER_MAX_ITER = 500
# Integer properties that are quantities, never categories (upstream hard-codes its regression keys, SANE §5.3).
REGRESSION_KEYS = frozenset({"epoch", "training_iteration", "test_acc", "train_acc", "val_acc", "ggap", "seed"})
# An integer property with at most this many distinct train values is treated as categorical (e.g. batch size).
MAX_INTEGER_CLASSES = 10
SPLITS = SPLIT_NAMES


def r2_score(targets: np.ndarray | torch.Tensor, predictions: np.ndarray | torch.Tensor) -> float:
    """`1 - mean((y - ŷ)²) / mean((y - ȳ)²)` with `ȳ` the mean of `targets` themselves (docs/method.md#probes).

    Returns NaN for fewer than one target or a constant target (no variance to explain).
    """
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    y_hat = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if y.shape != y_hat.shape:
        raise ValueError(f"targets and predictions differ in length: {y.shape[0]} vs {y_hat.shape[0]}.")
    if y.size == 0:
        return math.nan
    denominator = np.mean((y - y.mean()) ** 2)
    # A constant target has nothing to explain; rounding in `y.mean()` would otherwise give a tiny denominator and a
    # meaningless, huge negative R².
    if np.all(y == y[0]) or denominator <= 1e-24 * max(float(np.mean(y**2)), 1e-300):
        return math.nan
    return float(1.0 - np.mean((y - y_hat) ** 2) / denominator)


def _as_float64(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    features = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if features.ndim != 2:
        raise ValueError(
            f"features must be a 2-d array [num_samples, num_features], got shape {tuple(features.shape)}."
        )
    return features.detach().to(device="cpu", dtype=torch.float64)


def _to_numpy(values: Any) -> np.ndarray:
    """Targets as a 1-d numpy array: float64 when numeric (None -> NaN), else an object array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind in "fiu":
        return array.reshape(-1).astype(np.float64)
    array = np.asarray(values, dtype=object).reshape(-1)
    if all(
        v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)) for v in array
    ):
        return np.array([math.nan if v is None else float(v) for v in array], dtype=np.float64)
    return array


def _label(value: Any) -> str | None:
    """A class label as a string (`3.0` and `3` are the same class); None for a missing value."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def valid_rows(targets: Any) -> np.ndarray:
    """Boolean mask of the rows with a usable target (not None / NaN)."""
    values = _to_numpy(targets)
    if values.dtype == np.float64:
        return ~np.isnan(values)
    return np.array([not (v is None or (isinstance(v, float) and math.isnan(v))) for v in values], dtype=bool)


def _check_splits(features_by_split: Mapping[str, Any], targets_by_split: Mapping[str, Any]) -> list[str]:
    if "train" not in features_by_split:
        raise ValueError(f"A probe needs a 'train' split; got {sorted(features_by_split)}.")
    splits = [s for s in features_by_split if s in targets_by_split]
    for split in splits:
        n_features, n_targets = len(features_by_split[split]), len(targets_by_split[split])
        if n_features != n_targets:
            raise ValueError(f"Split {split!r} has {n_features} feature rows but {n_targets} targets.")
    return splits


class _Standardizer:
    """Feature-wise `(x - mean) / std` with the train statistics; constant features are only centred."""

    def __init__(self, train: torch.Tensor):
        self.mean = train.mean(dim=0)
        std = train.std(dim=0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class RidgeSolver:
    """All ridge solutions `(X'ᵀX' + αI) β = X'ᵀy` of one design matrix `X' = [X, 1]`, for any alpha and target.

    One symmetric eigendecomposition of the smaller Gram matrix (`X'ᵀX'` when `n >= d + 1`, else `X'X'ᵀ`, the dual
    form) replaces one `torch.linalg.solve` per alpha: the solutions are the same closed form in float64
    (docs/method.md#probes), and a 2,465-feature raw-weight probe costs one decomposition instead of 17 solves.

    Args:
        features (`torch.Tensor` of shape `(num_samples, num_features)`): the train features (float64 inside).
    """

    def __init__(self, features: np.ndarray | torch.Tensor):
        x = _as_float64(features)
        design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
        self.design = design
        self.primal = design.shape[0] >= design.shape[1]
        gram = design.T @ design if self.primal else design @ design.T
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(gram)

    def coefficients(self, targets: np.ndarray | torch.Tensor, alpha: float) -> torch.Tensor:
        """`β` of shape `(num_features + 1,)` (intercept last) for `targets` of shape `(num_samples,)`."""
        y = torch.as_tensor(np.asarray(targets, dtype=np.float64))
        inverse = 1.0 / (self.eigenvalues + alpha)
        if self.primal:  # β = V diag(1/(λ+α)) Vᵀ X'ᵀ y
            return self.eigenvectors @ (inverse * (self.eigenvectors.T @ (self.design.T @ y)))
        # Dual: (X'ᵀX' + αI)⁻¹ X'ᵀ = X'ᵀ (X'X'ᵀ + αI)⁻¹, so β = X'ᵀ U diag(1/(λ+α)) Uᵀ y.
        return self.design.T @ (self.eigenvectors @ (inverse * (self.eigenvectors.T @ y)))


def _predict(features: torch.Tensor, beta: torch.Tensor) -> np.ndarray:
    return (features @ beta[:-1] + beta[-1]).numpy()


def fit_ridge(
    features_by_split: Mapping[str, np.ndarray | torch.Tensor],
    targets_by_split: Mapping[str, Any],
    alphas: Sequence[float] = RIDGE_ALPHAS,
    standardize: bool = False,
    solver_cache: dict | None = None,
) -> dict[str, Any]:
    """Fit the ridge probe of docs/method.md#probes and evaluate it on every split.

    Args:
        features_by_split (`Mapping[str, array]`): `{"train": [N_train, F], "validation": ..., "test": ...}`; a
            missing `validation` split selects alpha by the train R² (as upstream).
        targets_by_split (`Mapping[str, array]`): numeric targets per split; NaN / None rows are dropped per split.
        alphas (`Sequence[float]`, *optional*, defaults to `RIDGE_ALPHAS`): the alpha grid (SANE §5.2).
        standardize (`bool`, *optional*, defaults to `False`): standardize features with the train mean/std first
            (not upstream; see the module docstring).
        solver_cache (`dict`, *optional*): a dict kept by the caller for *one* feature set; the decomposition of
            the train design is stored in it and reused by later calls (other properties of the same checkpoints).

    Returns:
        `dict`: `task` ("regression"), `metric` ("r2"), `scores` `{split: R²}` at the chosen alpha, `alpha`,
        `selected_on` (the split alpha was chosen on), `num_samples` `{split: rows used}`, `scores_by_alpha`
        `{alpha: {split: R²}}`, and `predictions` / `targets` `{split: np.ndarray}` (for plots; not JSON).
    """
    splits = _check_splits(features_by_split, targets_by_split)
    features, targets = {}, {}
    for split in splits:
        keep = valid_rows(targets_by_split[split])
        if split != "train" and not keep.any():
            continue
        features[split] = _as_float64(features_by_split[split])[torch.from_numpy(keep)]
        targets[split] = _to_numpy(targets_by_split[split])[keep].astype(np.float64)
    if len(targets["train"]) == 0:
        raise ValueError("The train split has no valid (non-NaN) target; cannot fit a probe.")
    if standardize:
        scaler = _Standardizer(features["train"])
        features = {split: scaler(x) for split, x in features.items()}
    # Keyed on the scaling and the kept train rows: properties without missing values share one decomposition.
    key = (standardize, hash(valid_rows(targets_by_split["train"]).tobytes()))
    solver = solver_cache.get(key) if solver_cache is not None else None
    if solver is None:
        solver = RidgeSolver(features["train"])
        if solver_cache is not None:
            solver_cache[key] = solver
    selected_on = VALIDATION_SPLIT if VALIDATION_SPLIT in features else "train"
    scores_by_alpha: dict[float, dict[str, float]] = {}
    best_alpha, best_score, best_beta = None, -math.inf, None
    for alpha in alphas:
        beta = solver.coefficients(targets["train"], float(alpha))
        scores = {split: r2_score(targets[split], _predict(x, beta)) for split, x in features.items()}
        scores_by_alpha[float(alpha)] = scores
        score = scores[selected_on]
        # Strictly better only: on ties (or NaN) the larger, earlier alpha stays, like upstream's running maximum.
        if best_alpha is None or (not math.isnan(score) and score > best_score):
            best_alpha, best_score, best_beta = float(alpha), score, beta
    return {
        "task": "regression",
        "metric": "r2",
        "scores": scores_by_alpha[best_alpha],
        "alpha": best_alpha,
        "selected_on": selected_on,
        "standardize": standardize,
        "num_samples": {split: len(y) for split, y in targets.items()},
        "scores_by_alpha": scores_by_alpha,
        "predictions": {split: _predict(x, best_beta) for split, x in features.items()},
        "targets": targets,
    }


def fit_classifier(
    features_by_split: Mapping[str, np.ndarray | torch.Tensor],
    labels_by_split: Mapping[str, Sequence[Any]],
    cs: Sequence[float] = CLASSIFIER_CS,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear softmax classifier for a categorical property (docs/method.md#probes), scored by accuracy.

    Upstream trains `Linear(F, n_classes)` for 50 epochs with Adam; here scikit-learn's `LogisticRegression` (L-BFGS,
    multinomial) on train-standardized features, with `C` chosen by validation accuracy, so the result does not
    depend on an unconverged optimizer. Classes are the sorted unique train labels; validation/test rows with a label not
    seen in train are dropped (upstream requires them to be a subset) and counted in `num_unseen`.

    Returns:
        `dict`: `task` ("classification"), `metric` ("accuracy"), `scores` `{split: accuracy}`, `C`, `classes`,
        `num_samples`, `num_unseen`, `predictions` / `targets` `{split: np.ndarray}` (labels; not JSON).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    splits = _check_splits(features_by_split, labels_by_split)
    raw_labels = {split: [_label(v) for v in _to_numpy(labels_by_split[split])] for split in splits}
    classes = sorted({v for v in raw_labels["train"] if v is not None})
    if len(classes) < 2:
        raise ValueError(f"A classification probe needs at least 2 classes in train, got {classes}.")
    index = {c: i for i, c in enumerate(classes)}
    features, labels, num_unseen = {}, {}, {}
    for split in splits:
        raw = raw_labels[split]
        keep = np.array([v is not None and v in index for v in raw], dtype=bool)
        num_unseen[split] = int(sum(v is not None and v not in index for v in raw))
        if split != "train" and not keep.any():
            continue
        features[split] = _as_float64(features_by_split[split])[torch.from_numpy(keep)].numpy()
        labels[split] = np.array([index[v] for v, k in zip(raw, keep) if k], dtype=np.int64)
    if any(num_unseen.values()):
        logger.warning("Dropped rows whose class is not in train: %s.", num_unseen)
    scaler = _Standardizer(torch.from_numpy(features["train"]))
    features = {split: scaler(torch.from_numpy(x)).numpy() for split, x in features.items()}
    selected_on = VALIDATION_SPLIT if VALIDATION_SPLIT in features else "train"
    best = None
    for c in cs:
        classifier = LogisticRegression(C=float(c), max_iter=_CLASSIFIER_MAX_ITER, random_state=seed)
        with warnings.catch_warnings():
            # Separable classes (a weakly regularized probe on many features) never converge in the strict sense;
            # the accuracy after the iteration budget is what is reported.
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(features["train"], labels["train"])
        scores = {split: float(classifier.score(x, labels[split])) for split, x in features.items()}
        if best is None or scores[selected_on] > best[1][selected_on]:
            best = (float(c), scores, classifier)
    c, scores, classifier = best
    return {
        "task": "classification",
        "metric": "accuracy",
        "scores": scores,
        "C": c,
        "selected_on": selected_on,
        "classes": classes,
        "num_samples": {split: len(y) for split, y in labels.items()},
        "num_unseen": num_unseen,
        "predictions": {split: classifier.predict(x) for split, x in features.items()},
        "targets": labels,
    }


def fit_gradient_boosting(
    features_by_split: Mapping[str, np.ndarray | torch.Tensor],
    targets_by_split: Mapping[str, Any],
    learning_rates: Sequence[float] = (0.05, 0.1),
    max_iter: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Non-linear extra probe: scikit-learn's `HistGradientBoostingRegressor`, learning rate chosen on validation R².

    Not part of SANE's protocol (the paper only uses linear probes); reported as a separate row.

    Returns:
        `dict` like `fit_ridge` (`task`, `metric`, `scores`, `num_samples`, `predictions`, `targets`) with
        `learning_rate` instead of `alpha`.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    splits = _check_splits(features_by_split, targets_by_split)
    features, targets = {}, {}
    for split in splits:
        keep = valid_rows(targets_by_split[split])
        if split != "train" and not keep.any():
            continue
        features[split] = _as_float64(features_by_split[split])[torch.from_numpy(keep)].numpy()
        targets[split] = _to_numpy(targets_by_split[split])[keep].astype(np.float64)
    selected_on = VALIDATION_SPLIT if VALIDATION_SPLIT in features else "train"
    best = None
    for learning_rate in learning_rates:
        regressor = HistGradientBoostingRegressor(
            learning_rate=float(learning_rate), max_iter=max_iter, early_stopping=False, random_state=seed
        )
        regressor.fit(features["train"], targets["train"])
        predictions = {split: regressor.predict(x) for split, x in features.items()}
        scores = {split: r2_score(targets[split], predictions[split]) for split in features}
        if best is None or scores[selected_on] > best[1][selected_on]:
            best = (float(learning_rate), scores, predictions)
    learning_rate, scores, predictions = best
    return {
        "task": "regression",
        "metric": "r2",
        "scores": scores,
        "learning_rate": learning_rate,
        "selected_on": selected_on,
        "num_samples": {split: len(y) for split, y in targets.items()},
        "predictions": predictions,
        "targets": targets,
    }


def infer_task(name: str, train_values: Sequence[Any], dtype: str | None = None) -> str:
    """`"regression"` or `"classification"` for a property (docs/method.md#probes, extended to few-valued integers).

    Strings and bools are categorical. Floats are regression targets. Integers are regression targets when their
    name is a known quantity (`REGRESSION_KEYS`, e.g. `epoch`) or they take more than `MAX_INTEGER_CLASSES` distinct
    train values, else categorical (e.g. `batch_size` drawn from a small grid).
    """
    if dtype in ("string", "bool"):
        return "classification"
    values = _to_numpy(train_values)
    if values.dtype != np.float64:  # strings / bools
        return "classification"
    values = values[~np.isnan(values)]
    if dtype == "float64" or not np.all(values == np.round(values)):
        return "regression"
    if name in REGRESSION_KEYS or len(np.unique(values)) > MAX_INTEGER_CLASSES:
        return "regression"
    return "classification"


def fit_probe(
    features_by_split: Mapping[str, np.ndarray | torch.Tensor],
    targets_by_split: Mapping[str, Any],
    task: str = "auto",
    name: str = "",
    dtype: str | None = None,
    standardize: bool = False,
    seed: int = 0,
    solver_cache: dict | None = None,
) -> dict[str, Any]:
    """Fit the linear probe for one property: the ridge probe (regression) or the softmax classifier.

    Args:
        features_by_split (`Mapping[str, array]`): `{split: [N_split, F]}` with at least `train`.
        targets_by_split (`Mapping[str, array]`): `{split: [N_split]}` targets (numbers, strings or bools).
        task (`str`, *optional*, defaults to `"auto"`): `"regression"`, `"classification"` or `"auto"`
            (`infer_task`).
        name (`str`, *optional*) and dtype (`str`, *optional*): the property's name and `datasets` dtype, used by
            `infer_task`.
        standardize (`bool`, *optional*, defaults to `False`): standardize features on train (ridge only; the
            classifier always does).
        seed (`int`, *optional*, defaults to 0): seed of the classifier.
        solver_cache (`dict`, *optional*): see `fit_ridge`.

    Returns:
        `dict`: see `fit_ridge` / `fit_classifier`; `scores` holds R² (regression) or accuracy (classification).

    Example:

    ```python
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = {s: rng.normal(size=(n, 5)) for s, n in [("train", 80), ("validation", 20), ("test", 20)]}
    >>> y = {s: v @ np.arange(5.0) for s, v in x.items()}
    >>> result = fit_probe(x, y)
    >>> round(result["scores"]["test"], 3), result["alpha"]
    (1.0, 1e-05)
    ```
    """
    if task == "auto":
        task = infer_task(name, list(targets_by_split["train"]), dtype)
    if task == "regression":
        return fit_ridge(features_by_split, targets_by_split, standardize=standardize, solver_cache=solver_cache)
    if task == "classification":
        return fit_classifier(features_by_split, targets_by_split, seed=seed)
    raise ValueError(f"`task` must be 'auto', 'regression' or 'classification', got {task!r}.")


__all__ = [
    "CLASSIFIER_CS",
    "RIDGE_ALPHAS",
    "RidgeSolver",
    "fit_classifier",
    "fit_gradient_boosting",
    "fit_probe",
    "fit_ridge",
    "infer_task",
    "r2_score",
]
