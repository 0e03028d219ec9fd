"""Decoding, BatchNorm conditioning, the generation pipeline, saving/reloading and the Hub push (docs/method.md#samplers)."""

import copy
import json
import shutil
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from sane_hf.cli import main_generate
from sane_hf.generation import (
    GenerateConfig,
    ModelDecoder,
    SaneGenerator,
    build_model_from_state_dict,
    condition_batchnorm,
    decode_latents,
    generate_models,
    has_batchnorm,
    load_anchors,
    plan_transfer,
    save_generated_models,
    tokens_to_state_dict,
)
from sane_hf.generation.decode import layout_for_module
from sane_hf.tasks import load_task
from sane_hf.zoo_models import CNNSmall, ResNet18, build_zoo_model, load_zoo_model


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def _config(setup, **overrides) -> GenerateConfig:
    values = dict(
        model=str(setup["sane"]),
        dataset=str(setup["dataset"]),
        n=3,
        num_anchors=4,
        num_candidates=6,
        evaluate=False,
        bn_iterations=3,
        seed=0,
    )
    values.update(overrides)
    return GenerateConfig(**values)


def test_decode_of_encode_reconstructs_better_than_a_zero_baseline(cnn_setup):
    """With a briefly trained SANE, decode(encode(x)) beats predicting all-zero normalized tokens (the layer means)."""
    sane, zoo = cnn_setup["model"], cnn_setup["zoo"]
    layout, normalization = zoo.layout, zoo.normalization
    tokens = torch.stack(list(zoo.splits["train"].select(range(16))["tokens"]))
    latents = sane.haloed_encode(tokens, layout.positions)
    reconstructed = decode_latents(sane, latents, layout.positions)
    mask = layout.mask
    real = normalization.denormalize(tokens, layout)[:, mask]
    decoded = normalization.denormalize(reconstructed, layout)[:, mask]
    zero = normalization.denormalize(torch.zeros_like(tokens), layout)[:, mask]
    mse = (decoded - real).square().mean()
    assert mse < (zero - real).square().mean()
    assert mse < real.square().mean()  # and far better than all-zero weights


def test_sampled_cnn_models_load_strictly_and_run(cnn_setup, digits):
    config = _config(cnn_setup, sampler="kde", anchor_filter=None)
    result = generate_models(cnn_setup["model"], cnn_setup["zoo"], config, task=digits)
    assert len(result.models) == 3
    images = digits.test.images[:5]
    for model, anchor in zip(result.models, result.samples.anchor_index.tolist()):
        assert isinstance(model, CNNSmall) and not model.training
        # Every network is rebuilt with its own anchor's activation and dropout (key indices shift with Dropout).
        assert model.activation == result.anchors.model_kwargs[anchor]["activation"]
        assert model.dropout == result.anchors.model_kwargs[anchor]["dropout"]
        assert torch.isfinite(model(images)).all()
    # The loaded weights are exactly the de-normalized decoded tokens (strict, position-mapped load).
    tokens = decode_latents(cnn_setup["model"], result.samples.latents, cnn_setup["zoo"].layout.positions)
    state = tokens_to_state_dict(tokens, cnn_setup["zoo"].layout, cnn_setup["zoo"].normalization)
    for (key, value), loaded in zip(state.items(), result.models[0].state_dict().values()):
        assert torch.equal(value[0], loaded), key
    assert len(result.distances) == 3 and all(d > 0 for d in result.distances)


def test_sampled_resnet_models_load_run_and_are_bn_conditioned(resnet_setup, digits):
    config = _config(resnet_setup, sampler="kde", num_anchors=3, n=2, bn_iterations=2, bn_batch_size=16)
    engine = SaneGenerator(resnet_setup["model"], resnet_setup["zoo"], config, task=digits)
    samples, _ = engine.sample(torch.Generator().manual_seed(0))
    raw = engine.decoder(samples.latents, samples.anchor_index)
    models = engine.build(samples)
    for before, model in zip(raw, models):
        assert isinstance(model, ResNet18) and has_batchnorm(model)
        assert torch.isfinite(model(digits.test.images[:4])).all()
        assert not torch.equal(before.bn1.running_mean, model.bn1.running_mean)  # conditioned
        assert torch.equal(before.conv1.weight, model.conv1.weight)
    # Transfer to a 5-class task: a fresh `fc`, everything else decoded.
    config = _config(resnet_setup, sampler="kde", num_anchors=2, n=1, num_classes=5, reset_classifier=True)
    engine = SaneGenerator(resnet_setup["model"], resnet_setup["zoo"], config, task=digits)
    (model,) = engine.build(engine.sample(torch.Generator().manual_seed(0))[0])
    assert model.fc.out_features == 5 and model(digits.test.images[:4]).shape == (4, 5)
    assert engine.distance_exclude(model) == ["fc.weight", "fc.bias"]


def test_resnet_generation_with_evaluation_conditions_every_population(resnet_setup, digits):
    """The whole evaluation on BatchNorm networks (zero-shot, to stay tiny): generated, anchors, the noise control and
    scratch networks; the controls and scratch networks are BN-conditioned like the generated ones, and the report's
    zero-shot accuracies are those of the networks returned, evaluated here independently."""
    evaluation = dict(evaluate=True, finetune_epochs=0, num_scratch=1, bn_batch_size=16)
    config = _config(resnet_setup, sampler="kde", n=2, num_anchors=2, **evaluation)
    engine_condition = SaneGenerator.condition
    conditioned = []

    def record_condition(self, model):
        result = engine_condition(self, model)
        conditioned.append(result)
        return result

    with mock.patch.object(SaneGenerator, "condition", record_condition):
        result = generate_models(resnet_setup["model"], resnet_setup["zoo"], config, task=digits)
    report = result.report
    assert set(report.populations) == {"generated", "anchors", "anchors_reconstructed", "noise_control", "scratch"}
    # BN conditioning: the generated networks, their reconstructed anchors, then the noise controls and scratch.
    assert len(conditioned) == 2 + 2 + 2 + 1
    for model in conditioned:
        assert not torch.equal(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
    images, labels = digits.split("test").images, digits.split("test").labels
    for model, history in zip(result.models, report.populations["generated"].histories, strict=True):
        with torch.no_grad():
            accuracy = (model.eval()(images).argmax(dim=1) == labels).double().mean().item()
        assert history[0]["test_acc"] == pytest.approx(accuracy, abs=1e-9)
    generated_distances = report.populations["generated"].distances
    assert report.populations["noise_control"].distances == pytest.approx(generated_distances, rel=1e-4)


def test_bn_conditioning_changes_only_batchnorm_buffers(resnet_setup, digits):
    torch.manual_seed(0)
    model = build_zoo_model("resnet18", in_channels=1, width=4).eval()
    model.layer1[0].bn1.momentum = 0.3
    before = copy.deepcopy(model.state_dict())
    params_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    condition_batchnorm(model, digits.train.images, iterations=3, batch_size=32, generator=generator)
    assert not model.training
    for name, p in model.named_parameters():
        assert torch.equal(p, params_before[name]), name
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], model.state_dict()[k]) for k in stats)
    assert model.layer1[0].bn1.momentum == 0.3  # restored
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed <= {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # Reproducible with the same generator seed; a no-op for a network without BatchNorm.
    again = build_zoo_model("resnet18", in_channels=1, width=4).eval()
    again.load_state_dict(before)
    condition_batchnorm(again, digits.train.images, 3, 32, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(again.state_dict()[k], model.state_dict()[k]) for k in stats)
    cnn = build_zoo_model("cnn_s", input_size=8, padding="auto")
    cnn_state = copy.deepcopy(cnn.state_dict())
    assert condition_batchnorm(cnn, digits.train.images) is cnn
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in cnn_state.items())


def test_transfer_to_another_class_count_reinitializes_only_the_classifier(cnn_setup):
    zoo = cnn_setup["zoo"]
    layout = zoo.layout
    anchors = load_anchors(zoo, num_anchors=1)
    state = tokens_to_state_dict(anchors.tokens, layout, zoo.normalization)
    state = {k: v[0] for k, v in state.items()}
    kwargs = {**anchors.model_kwargs[0], "num_classes": 5}
    with pytest.raises(ValueError, match="reset_classifier"):
        build_model_from_state_dict("cnn_s", kwargs, state, layout)
    model = build_model_from_state_dict("cnn_s", kwargs, state, layout, reset_classifier=True, init_seed=0)
    assert model.module_list[-1].weight.shape == (5, 20)
    same = build_model_from_state_dict("cnn_s", anchors.model_kwargs[0], state, layout)
    for (name, a), b in zip(same.named_parameters(), model.parameters()):
        if a.shape == b.shape and not name.startswith(f"module_list.{len(same.module_list) - 1}."):
            assert torch.equal(a, b), name
    # A fresh classifier is seeded, and the plan names what is reset.
    again = build_model_from_state_dict("cnn_s", kwargs, state, layout, reset_classifier=True, init_seed=0)
    assert torch.equal(again.module_list[-1].weight, model.module_list[-1].weight)
    plan = plan_transfer(layout, layout_for_module(model, layout), reset_classifier=True)
    assert plan.reset_keys == [
        f"module_list.{len(model.module_list) - 1}.weight",
        f"module_list.{len(model.module_list) - 1}.bias",
    ]
    # Layers other than the classifier must match.
    with pytest.raises(ValueError, match="does not match"):
        build_model_from_state_dict("cnn_s", {**kwargs, "input_size": 16, "num_classes": 10}, state, layout)


def test_decoder_is_deterministic_per_sample(cnn_setup):
    zoo = cnn_setup["zoo"]
    anchors = load_anchors(zoo, num_anchors=2)
    decoder = ModelDecoder(
        cnn_setup["model"],
        zoo.layout,
        zoo.normalization,
        "cnn_s",
        anchors.model_kwargs,
        target_model_kwargs={"num_classes": 3},
        reset_classifier=True,
    )
    latents = torch.randn(2, zoo.layout.num_tokens, 8, generator=torch.Generator().manual_seed(0))
    a = decoder(latents, [0, 1])
    b = decoder(latents[[1]], [1])  # built alone (e.g. while scoring) vs in a batch: the same network
    assert all(torch.equal(x, y) for x, y in zip(a[1].state_dict().values(), b[0].state_dict().values()))
    assert not torch.equal(a[0].module_list[-1].weight, a[1].module_list[-1].weight)


def test_generation_is_reproducible_and_subsampling_selects_the_best(cnn_setup, digits):
    config = _config(cnn_setup, sampler="subsample", num_candidates=8, n=3, score_split="val")
    first = generate_models(cnn_setup["model"], cnn_setup["zoo"], config, task=digits)
    second = generate_models(cnn_setup["model"], cnn_setup["zoo"], config, task=digits)
    assert torch.equal(first.samples.latents, second.samples.latents)
    assert torch.all(first.samples.scores[:-1] >= first.samples.scores[1:])
    # The score is the kept network's accuracy on the score split (so the network scored is the network saved).
    from sane_hf.tasks import evaluate_split

    for model, score in zip(first.models, first.samples.scores.tolist()):
        assert evaluate_split(model, *digits.val)["acc"] == pytest.approx(score)


def test_generated_models_save_and_reload_exactly(cnn_setup, digits, tmp_path):
    config = _config(cnn_setup, sampler="bootstrap", bootstrap_iterations=2, bootstrap_samples=4, bootstrap_keep=2)
    result = generate_models(cnn_setup["model"], cnn_setup["zoo"], config, task=digits)
    folder = save_generated_models(result, tmp_path / "generated")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "anchors",
        "generation.json",
        "model_000",
        "model_001",
        "model_002",
    ]
    for index, model in enumerate(result.models):
        sub = folder / f"model_{index:03d}"
        assert sorted(p.name for p in sub.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        reloaded = load_zoo_model(sub)
        assert type(reloaded) is type(model)
        for (key, value), loaded in zip(model.state_dict().items(), reloaded.state_dict().values()):
            assert torch.equal(value, loaded), key
        card = ModelCard.load(sub / "README.md")
        assert card.data.library_name == "sane_hf"
        assert {"sane", "generated-weights", "cnn_s", "sampler-bootstrap"} <= set(card.data.tags)
        assert card.data.sane_generation["sampler"] == "bootstrap"
        assert card.data.sane_generation["anchors"] == result.anchors.model_ids
        # The card's zero-shot accuracy is the saved network's, evaluated here independently on the test split.
        images, labels = digits.split("test").images, digits.split("test").labels
        with torch.no_grad():
            accuracy = (reloaded.eval()(images).argmax(dim=1) == labels).double().mean().item()
        assert card.data.eval_results[0].metric_value == pytest.approx(accuracy, abs=1e-6)
    generation = json.loads((folder / "generation.json").read_text())
    assert generation["sampler"] == "bootstrap" and len(generation["models"]) == 3
    assert len(generation["bootstrap_history"]) == 2
    assert len(list((folder / "anchors").iterdir())) == 4
    with pytest.raises(FileExistsError):
        save_generated_models(result, folder)
    assert not list(tmp_path.glob(".generated.tmp-*"))


def test_cli_generates_and_pushes_one_repo_with_subfolders(cnn_setup, tmp_path):
    uploaded = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file())
        uploaded.update(repo_id=repo_id, files=files, kwargs=kwargs)
        uploaded["card"] = ModelCard.load(folder_path / "model_000" / "README.md")
        uploaded["repo_card"] = ModelCard.load(folder_path / "README.md")
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/123", oid="123")

    output = tmp_path / "out"
    args = [
        "--model",
        str(cnn_setup["sane"]),
        "--dataset",
        str(cnn_setup["dataset"]),
        "--sampler",
        "kde",
        "--n",
        "2",
        "--num_anchors",
        "3",
        "--output_dir",
        str(output),
        "--push_to_hub",
        "org/sane-generated",
        "--base_model",
        "org/sane-cnn",
        "--finetune_epochs",
        "1",
        "--num_scratch",
        "2",
        "--plot",
        "false",
    ]
    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=fake_upload_folder),
    ):
        main_generate(args)
    create_repo.assert_called_once()
    assert create_repo.call_args.kwargs["repo_id"] == "org/sane-generated"
    assert uploaded["repo_id"] == "org/sane-generated"
    assert uploaded["kwargs"]["ignore_patterns"] == ["anchors/*"]
    files = uploaded["files"]
    for name in ("README.md", "generation.json", "evaluation.json", "evaluation.md"):
        assert name in files
    for index in range(2):
        for name in ("config.json", "model.safetensors", "README.md"):
            assert f"model_{index:03d}/{name}" in files
    card = uploaded["card"]
    assert card.data.base_model == "org/sane-cnn"
    assert card.data.library_name == "sane_hf"
    assert {"sane", "generated-weights"} <= set(card.data.tags)
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert set(results) == {"zero-shot test accuracy", "test accuracy after 1 fine-tuning epochs"}
    assert card.data.model_name == "SANE-generated cnn_s #000"
    assert "model-index" in card.content and "sane_generation" in card.content
    assert "model_001" in uploaded["repo_card"].text


def test_each_card_shows_its_own_networks_zero_shot_accuracy(cnn_setup, digits, tmp_path, always_predicts, share_of):
    """Networks of known, different accuracies stand in for the decoded ones: each saved card must show its own
    network's test accuracy (that label's share of the test split), not another network's or an anchor's."""
    labels = (0, 1)  # 39 and 40 of the 397 test images

    def known_networks(self, samples):
        return [always_predicts(labels[i]) for i in range(len(samples))]

    with mock.patch.object(SaneGenerator, "build", known_networks):
        result = generate_models(
            cnn_setup["model"], cnn_setup["zoo"], _config(cnn_setup, sampler="kde", n=2), task=digits
        )
    folder = save_generated_models(result, tmp_path / "generated")
    expected = [share_of(label, digits, "test") for label in labels]
    assert len(set(expected)) == len(expected)
    for index, accuracy in enumerate(expected):
        card = ModelCard.load(folder / f"model_{index:03d}" / "README.md")
        assert card.data.eval_results[0].metric_value == pytest.approx(accuracy, abs=5e-7)  # 6 decimals on the card
        assert result.zero_shot[index]["test_acc"] == pytest.approx(accuracy, abs=1e-9)


def _identity_sane(sane):
    """`sane` with encoding and decoding replaced by the identity on tokens: a perfect autoencoder, so whatever
    generation rebuilds differs from the anchors only through the normalizations used on the way in and out."""
    return mock.patch.multiple(
        sane,
        haloed_encode=lambda tokens, positions, batch_size=None: tokens.clone(),
        haloed_decode=lambda latents, positions, batch_size=None: latents.clone(),
    )


def test_anchors_of_another_zoo_are_rebuilt_in_their_own_scale(cnn_setup, digits, tmp_path):
    """A SANE used on another zoo of the same layout (here: every weight x3, so its statistics differ) encodes the
    anchors in the SANE's normalization and de-normalizes decoded tokens with the same one; mixing the two (zoo's in,
    SANE's out) rebuilds the anchors at the pretraining zoo's scale."""
    from safetensors.torch import load_file, save_file

    from sane_hf.data.configs import ConvertConfig
    from sane_hf.data.convert import convert_zoo
    from sane_hf.data.hub_dataset import load_zoo_dataset

    scaled_zoo = tmp_path / "zoo_x3"
    shutil.copytree(cnn_setup["root"] / "zoo", scaled_zoo)
    for checkpoint in scaled_zoo.glob("models/*/checkpoints/*.safetensors"):
        save_file({k: 3 * v for k, v in load_file(checkpoint).items()}, str(checkpoint))
    convert_zoo(
        ConvertConfig(zoo_dir=str(scaled_zoo), output_dir=str(tmp_path / "zoo_x3_ds"), token_size=64, seed=0),
        show_progress=False,
    )
    zoo_x3 = load_zoo_dataset(tmp_path / "zoo_x3_ds")
    sane = cnn_setup["model"]
    config = _config(cnn_setup, num_anchors=2)
    original = SaneGenerator(sane, cnn_setup["zoo"], config, task=digits)
    scaled = SaneGenerator(
        sane, zoo_x3, _config(cnn_setup, dataset=str(tmp_path / "zoo_x3_ds"), num_anchors=2), digits
    )
    assert scaled.anchors.model_ids == original.anchors.model_ids

    def assert_three_times(models, references):
        for model, reference in zip(models, references, strict=True):
            for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
                torch.testing.assert_close(value, 3 * expected, rtol=1e-5, atol=1e-6, msg=name)

    reference = original.anchor_models()
    assert_three_times(scaled.anchor_models(), reference)
    with _identity_sane(sane):
        scaled = SaneGenerator(sane, zoo_x3, _config(cnn_setup, dataset=str(tmp_path / "zoo_x3_ds"), num_anchors=2))
        assert_three_times(scaled.reconstructed_anchors(), reference)
