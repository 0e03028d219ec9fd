"""Probes (docs/method.md#probes) and the W / s(W) baselines (§5.4), against closed forms and slow references."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sane_hf.probing.baselines import STATISTICS, raw_weights, weight_statistics, weight_statistics_names
from sane_hf.probing.probe import (
    RIDGE_ALPHAS,
    RidgeSolver,
    fit_classifier,
    fit_gradient_boosting,
    fit_probe,
    fit_ridge,
    infer_task,
    r2_score,
)
from sane_hf.tokenization import TokenLayout


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _splits(rng, sizes=(("train", 120), ("validation", 40), ("test", 40)), num_features=6):
    return {split: rng.normal(size=(n, num_features)) for split, n in sizes}


def test_alpha_grid_is_upstreams():
    assert len(RIDGE_ALPHAS) == 17
    assert RIDGE_ALPHAS[0] == 1e3 and RIDGE_ALPHAS[-1] == 1e-5
    assert list(RIDGE_ALPHAS) == sorted(RIDGE_ALPHAS, reverse=True)


def test_r2_uses_the_evaluated_splits_mean():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    # Predicting another split's mean is penalized: 1 - mean((y - 0)^2) / var(y).
    assert r2_score(y, np.zeros(4)) == pytest.approx(1 - np.mean(y**2) / np.var(y))
    assert math.isnan(r2_score(np.full(5, 0.01), np.zeros(5)))  # constant target: nothing to explain
    assert math.isnan(r2_score(np.zeros(0), np.zeros(0)))


@pytest.mark.parametrize("num_samples,num_features", [(50, 7), (20, 60)])  # primal and dual forms
def test_ridge_solver_matches_linalg_solve(num_samples, num_features):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(num_samples, num_features)), rng.normal(size=num_samples)
    solver = RidgeSolver(x)
    assert solver.primal == (num_samples >= num_features + 1)
    design = torch.tensor(np.c_[x, np.ones(num_samples)])
    for alpha in (1e3, 1.0, 1e-3):
        expected = torch.linalg.solve(
            design.T @ design + alpha * torch.eye(num_features + 1, dtype=torch.float64), design.T @ torch.tensor(y)
        )
        torch.testing.assert_close(solver.coefficients(y, alpha), expected, rtol=1e-7, atol=1e-9)


def test_ridge_recovers_a_noise_free_linear_target():
    rng = np.random.default_rng(1)
    x = _splits(rng)
    weights = rng.normal(size=6)
    y = {split: v @ weights + 3.0 for split, v in x.items()}
    result = fit_probe(x, y)
    assert result["task"] == "regression" and result["metric"] == "r2"
    assert all(result["scores"][split] > 0.99 for split in ("train", "validation", "test"))
    assert result["alpha"] in RIDGE_ALPHAS
    # Also with standardized features, and with torch inputs.
    standardized = fit_probe({k: torch.tensor(v) for k, v in x.items()}, y, standardize=True)
    assert standardized["scores"]["test"] > 0.99


def test_alpha_is_chosen_on_val():
    # Many noisy features and few train rows: train R² keeps rising as alpha -> 0, val R² does not.
    rng = np.random.default_rng(2)
    x = _splits(rng, sizes=(("train", 40), ("validation", 200), ("test", 200)), num_features=30)
    weights = np.zeros(30)
    weights[:3] = 1.0
    y = {split: v @ weights + rng.normal(scale=1.0, size=len(v)) for split, v in x.items()}
    result = fit_ridge(x, y)
    by_alpha = result["scores_by_alpha"]
    best_val = max(by_alpha, key=lambda a: by_alpha[a]["validation"])
    best_train = max(by_alpha, key=lambda a: by_alpha[a]["train"])
    assert result["alpha"] == best_val
    assert best_train != best_val
    assert result["scores"] == by_alpha[best_val]
    assert result["selected_on"] == "validation"
    # Without a val split, alpha is chosen on train (upstream's fallback).
    no_val = fit_ridge({k: x[k] for k in ("train", "test")}, y)
    assert no_val["selected_on"] == "train" and no_val["alpha"] == best_train


def test_nan_targets_are_dropped_per_split():
    rng = np.random.default_rng(3)
    x = _splits(rng)
    y = {split: v @ np.arange(6.0) for split, v in x.items()}
    y["train"][:10] = np.nan
    y["test"] = [None if i % 4 == 0 else v for i, v in enumerate(y["test"])]
    result = fit_probe(x, y)
    assert result["num_samples"] == {"train": 110, "validation": 40, "test": 30}
    assert result["scores"]["test"] > 0.99


def test_standardization_makes_the_probe_scale_invariant():
    rng = np.random.default_rng(4)
    x = _splits(rng, sizes=(("train", 30), ("validation", 30), ("test", 30)), num_features=10)
    y = {split: v[:, 0] + 0.5 * rng.normal(size=len(v)) for split, v in x.items()}
    scaled = {split: v * np.array([1000.0] + [1.0] * 9) for split, v in x.items()}
    a, b = fit_ridge(x, y, standardize=True), fit_ridge(scaled, y, standardize=True)
    assert a["alpha"] == b["alpha"]
    assert a["scores"]["test"] == pytest.approx(b["scores"]["test"], abs=1e-9)


def test_classifier_on_a_separable_target():
    rng = np.random.default_rng(5)
    x = _splits(rng, num_features=4)
    labels = {split: np.where(v[:, 0] + v[:, 1] > 0, "relu", "tanh").tolist() for split, v in x.items()}
    for split, v in x.items():  # a margin around the separating plane
        v[:, 0] += np.where(np.array(labels[split]) == "relu", 1.5, -1.5)
    result = fit_probe(x, labels)
    assert result["task"] == "classification" and result["metric"] == "accuracy"
    assert result["classes"] == ["relu", "tanh"]
    assert result["scores"] == {"train": 1.0, "validation": 1.0, "test": 1.0}
    # A val/test class never seen in train is dropped and counted, not an error.
    labels["test"][0] = "gelu"
    dropped = fit_classifier(x, labels)
    assert dropped["num_unseen"]["test"] == 1 and dropped["num_samples"]["test"] == 39


def test_classifier_needs_two_train_classes():
    rng = np.random.default_rng(6)
    x = _splits(rng, num_features=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_classifier(x, {split: ["adam"] * len(v) for split, v in x.items()})


def test_gradient_boosting_extra_probe():
    rng = np.random.default_rng(7)
    x = {split: rng.uniform(-1, 1, size=(n, 3)) for split, n in (("train", 300), ("validation", 100), ("test", 100))}
    y = {split: np.abs(v[:, 0]) for split, v in x.items()}  # non-linear, invisible to a linear probe
    result = fit_gradient_boosting(x, y, learning_rates=(0.1,), max_iter=100)
    assert result["scores"]["test"] > 0.95
    assert fit_ridge(x, y)["scores"]["test"] < 0.2


def test_infer_task():
    assert infer_task("optimizer", ["adam", "sgd"]) == "classification"
    assert infer_task("flag", [True, False], "bool") == "classification"
    assert infer_task("test_acc", [0.5, 0.7], "float64") == "regression"
    assert infer_task("epoch", [0, 1, 2, 3], "int64") == "regression"
    assert infer_task("batch_size", torch.tensor([16, 32, 64]), "int64") == "classification"
    assert infer_task("width", list(range(50)), "int64") == "regression"


# -------------------------------------------------------------------------------------------------------------------
# Baselines
# -------------------------------------------------------------------------------------------------------------------


def _tiny_layout_and_checkpoints(num_checkpoints=5):
    """Linear(5,3) -> 3 rows of 6 values = 2 tokens each (2 padding slots per row); Linear(3,2) -> 1 token per row."""
    module = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    layout = TokenLayout.from_module(module, token_size=4)
    state_dicts = []
    for seed in range(num_checkpoints):
        torch.manual_seed(seed)
        state_dicts.append({k: torch.randn_like(v) * (1 + seed) for k, v in module.state_dict().items()})
    batched = {k: torch.stack([sd[k] for sd in state_dicts]) for k in state_dicts[0]}
    tokens = layout.tokenize(batched)[0]
    return layout, state_dicts, tokens


def _slow_statistics(values: np.ndarray) -> list[float]:
    return [
        values.mean(),
        values.var(ddof=1),
        *np.percentile(values, [1, 25, 50, 75, 99]),
    ]


def test_layer_statistics_against_a_slow_reference():
    layout, state_dicts, tokens = _tiny_layout_and_checkpoints()
    assert (layout.num_tokens, layout.num_layers) == (8, 2)
    features = weight_statistics(tokens, layout)
    assert features.shape == (5, 2 * len(STATISTICS))
    assert len(weight_statistics_names(layout)) == features.shape[1]
    padded = weight_statistics(tokens, layout, include_padding=True)
    for i, sd in enumerate(state_dicts):
        expected, expected_padded = [], []
        for prefix, num_tokens in (("0", 6), ("2", 2)):
            real = np.concatenate([sd[f"{prefix}.weight"].numpy().ravel(), sd[f"{prefix}.bias"].numpy().ravel()])
            expected += _slow_statistics(real)
            # Upstream's quirk: the layer's tokens flattened with their zero padding.
            expected_padded += _slow_statistics(np.concatenate([real, np.zeros(num_tokens * 4 - real.size)]))
        np.testing.assert_allclose(features[i].numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(padded[i].numpy(), expected_padded, rtol=1e-5, atol=1e-6)


def test_raw_weights_are_the_real_values():
    layout, state_dicts, tokens = _tiny_layout_and_checkpoints()
    flat = raw_weights(tokens, layout.mask)
    assert flat.shape == (5, layout.num_values) == (5, 3 * 6 + 2 * 4)
    for i, sd in enumerate(state_dicts):
        values = torch.cat([v.reshape(-1) for v in sd.values()])
        torch.testing.assert_close(flat[i].sort().values, values.sort().values)
    with pytest.raises(ValueError, match="do not match the mask"):
        raw_weights(tokens[:, :3], layout.mask)


def test_solver_cache_is_shared_across_properties():
    rng = np.random.default_rng(8)
    x = _splits(rng)
    cache = {}
    for weights in (np.arange(6.0), -np.ones(6)):
        y = {split: v @ weights + 0.1 * rng.normal(size=len(v)) for split, v in x.items()}
        cached, fresh = fit_ridge(x, y, solver_cache=cache), fit_ridge(x, y)
        assert cached["alpha"] == fresh["alpha"] and cached["scores"] == pytest.approx(fresh["scores"])
    assert len(cache) == 1
    fit_ridge(x, y, standardize=True, solver_cache=cache)
    assert len(cache) == 2
