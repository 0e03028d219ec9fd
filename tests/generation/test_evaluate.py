"""Evaluation of generated networks (docs/method.md#evaluation): fine-tuning curves, baselines, noise control, ensembles."""

import copy
import json

import pytest
import torch

from sane_hf.cli import main_evaluate
from sane_hf.generation import (
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    add_isotropic_noise,
    compare_with_baselines,
    ensemble_metrics,
    evaluate_population,
    finetune,
    generate_models,
    noise_control_models,
    parameter_vector,
    save_generated_models,
    weight_distances,
    write_evaluation_report,
)
from sane_hf.tasks import evaluate_split, load_task
from sane_hf.zoo_models import build_zoo_model


CNN_KWARGS = {"input_size": 8, "padding": "auto", "in_channels": 1}


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


@pytest.fixture(scope="module")
def generated(cnn_setup, digits):
    config = GenerateConfig(
        model=str(cnn_setup["sane"]),
        dataset=str(cnn_setup["dataset"]),
        sampler="kde",
        n=3,
        num_anchors=3,
        evaluate=False,
    )
    return generate_models(cnn_setup["model"], cnn_setup["zoo"], config, task=digits)


def _cnn(seed: int):
    torch.manual_seed(seed)
    return build_zoo_model("cnn_s", **CNN_KWARGS).eval()


def test_reported_accuracies_are_those_of_models_with_known_behaviour(digits, always_predicts, share_of):
    """Each population reports its own models' accuracies: models that always answer one class score exactly that
    class's share of each split (about 1/10 on the near-balanced digits), and an ensemble of them answers the class
    with the largest summed logit."""
    generated = [always_predicts(0), always_predicts(3, margin=2.0)]
    anchors = [always_predicts(5), always_predicts(7)]
    config = FinetuneConfig(finetune_epochs=0, num_scratch=0, noise_control=False, ensemble=True)
    report = compare_with_baselines(generated, anchors, digits, config, "cnn_s", [CNN_KWARGS])
    assert list(report.populations) == ["generated", "anchors"]
    for population, labels in (("generated", (0, 3)), ("anchors", (5, 7))):
        result = report.populations[population]
        for history, label in zip(result.histories, labels, strict=True):
            for split in ("train", "val", "test"):
                assert history[0][f"{split}_acc"] == pytest.approx(share_of(label, digits, split), abs=1e-9)
        mean, _ = result.curve("test_acc")
        assert mean[0] == pytest.approx(sum(share_of(label, digits, "test") for label in labels) / 2, abs=1e-9)
    ensemble = report.populations["generated"].ensemble["epoch_0"]
    assert ensemble["test_acc"] == pytest.approx(share_of(3, digits, "test"), abs=1e-9)
    assert 0.05 < share_of(3, digits, "test") < 0.15  # near-balanced: these are not all the same number by chance


def test_noise_control_has_the_generated_models_distance(generated):
    distances, nearest = weight_distances(generated.models, generated.anchor_models)
    assert torch.allclose(distances, torch.tensor(generated.distances, dtype=torch.float64))
    anchors_before = [copy.deepcopy(a.state_dict()) for a in generated.anchor_models]
    controls, control_distances, control_nearest = noise_control_models(
        generated.models, generated.anchor_models, torch.Generator().manual_seed(0)
    )
    assert torch.equal(control_distances, distances) and torch.equal(control_nearest, nearest)
    for control, anchor, distance in zip(controls, nearest.tolist(), distances.tolist()):
        realized = (parameter_vector(control) - parameter_vector(generated.anchor_models[anchor])).norm()
        assert float(realized) == pytest.approx(distance, rel=1e-5)
    # The anchors themselves are untouched.
    for anchor, before in zip(generated.anchor_models, anchors_before):
        assert all(torch.equal(v, anchor.state_dict()[k]) for k, v in before.items())


def test_isotropic_noise_is_seeded_and_can_exclude_the_classifier():
    a, b = _cnn(0), _cnn(0)
    reference = parameter_vector(_cnn(0))
    add_isotropic_noise(a, 2.5, torch.Generator().manual_seed(1), exclude=["module_list.11.weight"])
    add_isotropic_noise(b, 2.5, torch.Generator().manual_seed(1), exclude=["module_list.11.weight"])
    assert torch.equal(parameter_vector(a), parameter_vector(b))
    assert float((parameter_vector(a) - reference).norm()) == pytest.approx(2.5, rel=1e-5)
    assert torch.equal(a.module_list[11].weight, _cnn(0).module_list[11].weight)


def test_finetune_records_every_epoch_and_is_reproducible(digits):
    model = _cnn(0)
    zero_shot = evaluate_split(model, *digits.test)
    history, logits = finetune(copy.deepcopy(model), digits, epochs=2, lr=3e-3, seed=5)
    again, _ = finetune(copy.deepcopy(model), digits, epochs=2, lr=3e-3, seed=5)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[0]["test_acc"] == zero_shot["acc"]
    assert history == again
    assert history[2]["train_acc"] > history[0]["train_acc"]
    assert set(logits) == {0, 2} and logits[2]["test"].shape == (digits.test.num_samples, 10)


def test_ensemble_averages_logits_on_aligned_data(digits):
    models = [_cnn(s) for s in range(3)]
    logits = [m(digits.test.images).detach() for m in models]
    single = ensemble_metrics(logits[:1], digits.test.labels)
    assert single["acc"] == evaluate_split(models[0], *digits.test)["acc"]
    expected = (torch.stack(logits).mean(0).argmax(1) == digits.test.labels).double().mean()
    assert ensemble_metrics(logits, digits.test.labels)["acc"] == pytest.approx(float(expected))
    config = FinetuneConfig(finetune_epochs=1)
    copies = evaluate_population("copies", [copy.deepcopy(models[0]) for _ in range(2)], digits, config)
    alone = evaluate_population("alone", [models[0]], digits, config)
    # The train split is evaluated in its fixed order (the original shuffled it per model, §6.9): an ensemble of
    # identical networks, or of one network, scores exactly like that network, on train data too.
    assert copies.ensemble["epoch_0"]["train_acc"] == copies.histories[0][0]["train_acc"]
    assert alone.ensemble["epoch_1"]["train_acc"] == alone.histories[0][1]["train_acc"]
    assert alone.ensemble["epoch_1"]["test_acc"] == alone.histories[0][1]["test_acc"]
    # Model r of every population sees the same batch order: the copy fine-tuned first matches `alone`.
    assert copies.histories[0] == alone.histories[0]


def test_learning_rate_grid_reports_each_population_at_its_best_validation_rate(digits):
    models = [_cnn(0), _cnn(1)]
    config = FinetuneConfig(finetune_epochs=1, finetune_lr_grid=[1e-4, 1e-2])
    result = evaluate_population("grid", models, digits, config)
    search = result.extra["lr_search"]
    assert set(search) == {"0.0001", "0.01"}
    best = max(search, key=lambda lr: search[lr]["final_val_acc"])
    assert result.extra["finetune_lr"] == float(best)
    assert result.curve("test_acc")[0] == search[best]["test_acc"]
    single = evaluate_population("single", models, digits, FinetuneConfig(finetune_epochs=1, finetune_lr=float(best)))
    assert single.histories == result.histories
    assert "lr_search" not in single.extra


def test_comparison_report_has_every_population(generated, digits, tmp_path):
    config = FinetuneConfig(finetune_epochs=1, num_scratch=2)
    report = compare_with_baselines(
        generated.models, generated.anchor_models, digits, config, "cnn_s", [CNN_KWARGS], generation_seconds=1.5
    )
    assert list(report.populations) == ["generated", "anchors", "noise_control", "scratch"]
    assert report.populations["scratch"].num_models == 2
    noise = report.populations["noise_control"]
    assert noise.distances == pytest.approx(report.populations["generated"].distances, rel=1e-5)
    # Scratch models are built from the given arguments by default (`generate` passes the generated models'), or like
    # the anchors (best first) on request.
    assert (
        report.populations["scratch"].extra["model_kwargs"] == [build_zoo_model("cnn_s", **CNN_KWARGS).zoo_config] * 2
    )
    like_anchors = compare_with_baselines(
        generated.models[:1],
        generated.anchor_models,
        digits,
        FinetuneConfig(finetune_epochs=0, num_scratch=2, noise_control=False, scratch_architecture="anchors"),
        "cnn_s",
        [CNN_KWARGS],
    )
    expected = [m.zoo_config for m in generated.anchor_models[:2]]
    assert like_anchors.populations["scratch"].extra["model_kwargs"] == expected
    paths = write_evaluation_report(report, tmp_path, plot=True)
    assert {p.name for p in paths.values()} == {"evaluation.json", "evaluation.md", "evaluation.png"}
    data = json.loads(paths["json"].read_text())
    curve = data["populations"]["generated"]["curves"]["test_acc"]
    assert len(curve["mean"]) == 2 and data["populations"]["generated"]["generation_seconds"] == 1.5
    assert "distance_to_nearest_anchor" in data["populations"]["noise_control"]
    markdown = paths["markdown"].read_text()
    assert "| generated (SANE) | 3 |" in markdown and "anchor + noise at same distance" in markdown
    assert paths["plot"].stat().st_size > 1000


def test_evaluate_cli_on_saved_models(generated, tmp_path):
    folder = save_generated_models(generated, tmp_path / "gen")
    main_evaluate(["--models", str(folder), "--finetune_epochs", "1", "--num_scratch", "1", "--plot", "false"])
    data = json.loads((folder / "evaluation.json").read_text())
    assert set(data["populations"]) == {"generated", "anchors", "noise_control", "scratch"}
    assert data["task"]["name"] == "digits"
    assert data["populations"]["generated"]["num_models"] == 3
    with pytest.raises(ValueError, match="`models` is required"):
        EvaluateConfig()
