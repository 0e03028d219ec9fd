"""Bootstrap intervals over models and the sentences REPORT.md writes under its tables, against hand-computed values."""

import math
import statistics

import numpy as np
import pytest

from sane_hf.quickstart import generation_verdict, probe_verdict, summarize_generation, summarize_probe
from sane_hf.utils.bootstrap import bootstrap_over_groups, mean_interval


def test_bootstrap_resamples_models_not_rows():
    # Two models, 100 identical rows each, values 0 and 1: a resample of models has mean 0, 0.5 or 1, so the 95%
    # interval is [0, 1]. Resampling the 200 rows instead would give about [0.43, 0.57].
    groups = np.repeat(["a", "b"], 100)
    values = np.repeat([0.0, 1.0], 100)
    low, high = bootstrap_over_groups(groups, lambda rows: values[rows].mean(), num_resamples=500)
    assert (low, high) == (0.0, 1.0)
    assert mean_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)
    low, high = mean_interval([0.1, 0.2, 0.9, 0.4])
    assert 0.1 <= low < statistics.mean([0.1, 0.2, 0.9, 0.4]) < high <= 0.9


def _population(values):
    return {"epochs": [0, 1], "per_model": [[{"test_acc": v}, {"test_acc": v + 0.01}] for v in values]}


def _evaluation(generated, control, anchors, scratch_final):
    populations = {
        "generated": _population(generated),
        "noise_control": _population(control),
        "anchors": _population(anchors),
        "scratch": _population([0.1, 0.2]),
    }
    for name, population in populations.items():
        rows = population["per_model"]
        means = [statistics.mean(row[epoch]["test_acc"] for row in rows) for epoch in (0, 1)]
        if name == "scratch":
            means[1] = scratch_final
        population["curves"] = {"test_acc": {"mean": means}}
    return {"populations": populations}


def test_generation_verdict_states_the_computed_margin():
    generated, control, anchors = [0.90, 0.92, 0.94], [0.70, 0.80, 0.75], [0.95, 0.96, 0.97]
    summary = summarize_generation(_evaluation(generated, control, anchors, 0.5))
    assert math.isclose(summary["generated"]["mean"], 0.92)
    assert math.isclose(summary["noise_control"]["std"], statistics.stdev(control))
    text = generation_verdict(_evaluation(generated, control, anchors, 0.5), seed=2)
    margin = 0.92 - statistics.mean(control)
    assert text.startswith("Seed 2: generated models reach zero-shot test accuracy 0.920")
    assert f"{100 * 0.92 / 0.96:.0f}% of the anchors' 0.960" in text
    assert (
        f"SANE beats the anchor+noise control at the same distance (0.750 ± {statistics.stdev(control):.3f})" in text
    )
    assert f"by {margin:+.3f}, {margin / statistics.stdev(control):.1f} of the control's standard deviations" in text
    assert "are above training from scratch after 1 (0.500)" in text

    losing = generation_verdict(_evaluation(control, generated, anchors, 0.99))
    assert "SANE does not beat the anchor+noise control" in losing
    assert "not above training from scratch" in losing


@pytest.mark.parametrize("validation", ["validation", "val"])  # "val": results.json written before format 2
def test_probe_verdict_picks_rows_on_validation(validation):
    def record(method, val, test):
        scores = {validation: val, "test": test}
        return {"property": "test_acc", "method": method, "scaling": "none", "scores": scores}

    results = {
        "records": [
            record("SANE mean", 0.80, 0.95),  # best on test, not on validation: must not be chosen
            record("SANE stats", 0.90, 0.85),
            record("s(W)", 0.88, 0.87),
            record("W", 0.50, 0.40),
            {**record("SANE stats", 0.99, 0.99), "property": "epoch"},  # another property: ignored
        ]
    }
    probe = summarize_probe(results, "test_acc")
    assert probe["sane"]["method"] == "SANE stats" and probe["sane"]["test"] == 0.85
    assert probe["sane"]["validation"] == 0.90
    text = probe_verdict(probe, seed=0)
    assert "SANE stats, chosen on validation) reaches test R² 0.850" in text
    assert "does not beat s(W) (0.870; difference -0.020)" in text and "beats W (0.400; difference +0.450)" in text
    # A difference that prints as +0.000 is a tie, not a win.
    tie = probe_verdict({"sane": {"method": "SANE stats", "test": 0.8702}, "s(W)": {"test": 0.8700}})
    assert "it is level with s(W) (0.870; difference +0.000)" in tie and "beats" not in tie


def test_selected_control_within_rounding_is_a_tie():
    evaluation = _evaluation([0.90, 0.92, 0.94], [0.70, 0.80, 0.75], [0.95, 0.96, 0.97], 0.5)
    evaluation["populations"]["noise_control_selected"] = _population([0.9202, 0.9198, 0.9201])
    text = generation_verdict(evaluation)
    assert "the control reaches 0.920" in text and "SANE is level with it (difference -0.000)" in text
