"""Nothing is chosen on the split results are reported on.

Each test runs a selecting step twice: once on the real data and once with every test-split label scrambled (the
task's test labels, the zoo's `test_*` columns, the probe's test targets). Every choice (anchors, subsampled
candidates, fine-tuning learning rates, probe alphas and classifier C, early-stopping epochs) must be identical; the
test metrics themselves must differ, which shows the scrambling reached them.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from sane_hf.generation import GenerateConfig, generate_models
from sane_hf.probing.finetune import finetune_property_predictor
from sane_hf.probing.probe import fit_probe
from sane_hf.tasks import load_task
from sane_hf.tasks.datasets import TaskSplit


def _scrambled_task(task, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = task.test.labels
    scrambled = (labels + 1 + torch.randint(0, task.num_classes - 1, labels.shape, generator=generator)) % (
        task.num_classes
    )
    return dataclasses.replace(task, test=TaskSplit(task.test.images, scrambled))


def _scrambled_zoo(zoo, splits=("train", "validation", "test"), seed=0):
    """A shallow copy of the zoo whose `splits` have random `test_acc` / `test_loss` columns."""
    rng = np.random.default_rng(seed)
    copy = dataclasses.replace(zoo, splits=dict(zoo.splits))
    for name in splits:
        split = copy.splits[name]
        for column in ("test_acc", "test_loss"):
            if column in split.column_names:
                values = rng.random(len(split)).tolist()
                split = split.remove_columns(column).add_column(column, values)
        copy.splits[name] = split
    return copy


def test_generation_chooses_nothing_on_test_labels(cnn_setup):
    task = load_task("digits", seed=0)
    config = GenerateConfig(
        model=str(cnn_setup["sane"]),
        dataset=str(cnn_setup["dataset"]),
        n=3,
        num_anchors=4,
        num_candidates=8,
        sampler="subsample",
        score_split="val",
        evaluate=True,
        finetune_epochs=1,
        finetune_lr_grid=[1e-3, 1e-2],
        num_scratch=2,
        bn_iterations=1,
        seed=0,
    )
    runs = []
    for zoo, run_task in ((cnn_setup["zoo"], task), (_scrambled_zoo(cnn_setup["zoo"]), _scrambled_task(task))):
        result = generate_models(cnn_setup["model"], zoo, config, task=run_task)
        runs.append(result)
    clean, scrambled = runs
    assert clean.anchors.model_ids == scrambled.anchors.model_ids
    torch.testing.assert_close(clean.samples.latents, scrambled.samples.latents, rtol=0, atol=0)
    for name, population in clean.report.populations.items():
        other = scrambled.report.populations[name]
        assert population.extra.get("finetune_lr") == other.extra.get("finetune_lr"), name
        for history, other_history in zip(population.histories, other.histories):
            for row, other_row in zip(history, other_history):
                assert row["val_acc"] == other_row["val_acc"], name
    # The scrambled labels did reach the test metrics.
    assert [r["test_acc"] for r in clean.zero_shot] != [r["test_acc"] for r in scrambled.zero_shot]


def _probe_data(task, seed=0):
    rng = np.random.default_rng(seed)
    features = {split: rng.normal(size=(n, 6)) for split, n in (("train", 60), ("validation", 30), ("test", 30))}
    weights = rng.normal(size=6)
    if task == "regression":
        targets = {split: x @ weights + 0.5 * rng.normal(size=len(x)) for split, x in features.items()}
    else:
        targets = {split: np.where(x @ weights > 0, "a", "b").astype(object) for split, x in features.items()}
    return features, targets


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_probe_choices_ignore_test_targets(task):
    features, targets = _probe_data(task)
    rng = np.random.default_rng(1)
    scrambled = dict(targets)
    scrambled["test"] = rng.permutation(targets["test"]) if task == "classification" else rng.normal(size=30)
    clean = fit_probe(features, targets, task=task, name="p", seed=0)
    other = fit_probe(features, scrambled, task=task, name="p", seed=0)
    choice = "alpha" if task == "regression" else "C"
    assert clean[choice] == other[choice]
    assert clean["scores"]["validation"] == other["scores"]["validation"]
    assert clean["scores"]["test"] != other["scores"]["test"]


def test_finetuned_probe_stops_on_validation_not_test(cnn_setup):
    zoo = cnn_setup["zoo"]
    scrambled = _scrambled_zoo(zoo, splits=("test",))
    runs = [
        finetune_property_predictor(
            cnn_setup["model"], splits, zoo.layout, ["test_acc"], epochs=3, batch_size=8, patience=1, seed=0
        )
        for splits in (zoo.splits, scrambled.splits)
    ]
    assert runs[0]["best_epoch"] == runs[1]["best_epoch"]
    assert runs[0]["scores"]["test_acc"]["validation"] == runs[1]["scores"]["test_acc"]["validation"]
    assert runs[0]["scores"]["test_acc"]["test"] != runs[1]["scores"]["test_acc"]["test"]


def test_selected_noise_control_is_the_best_of_one_control_per_candidate(cnn_setup):
    """`noise_control_selected`: every scored candidate gets one control (its nearest anchor moved by its distance
    along a seeded random direction); the kept ones are the best on the score split, at candidates' distances."""
    from sane_hf.generation.evaluate import add_isotropic_noise, weight_distances
    from sane_hf.generation.generate import SaneGenerator, selected_noise_controls
    from sane_hf.tasks import evaluate_split

    config = GenerateConfig(
        model=str(cnn_setup["sane"]),
        dataset=str(cnn_setup["dataset"]),
        n=2,
        num_anchors=3,
        num_candidates=6,
        bandwidth=0.3,
        evaluate=False,
        seed=0,
    )
    engine = SaneGenerator(cnn_setup["model"], cnn_setup["zoo"], config)
    engine.sample(torch.Generator().manual_seed(0))
    distances, nearest = engine.candidate_distances
    assert len(distances) == 6
    anchors = engine.anchor_models()
    kept = selected_noise_controls(engine, anchors, keep=2, seed=5)
    realized, _ = weight_distances(kept, anchors)
    assert all(torch.isclose(d, distances, rtol=1e-4).any() for d in realized)
    # Independently: one control per candidate, seeded as documented, scored on validation images.
    images, labels = engine.task.split("val")
    scores = []
    for index in range(6):
        control = copy.deepcopy(anchors[int(nearest[index])])
        add_isotropic_noise(control, float(distances[index]), torch.Generator().manual_seed(5 * 1_000_003 + index))
        scores.append(evaluate_split(control, images, labels)["acc"])
    kept_scores = sorted((evaluate_split(m, images, labels)["acc"] for m in kept), reverse=True)
    assert kept_scores == sorted(scores, reverse=True)[:2]
