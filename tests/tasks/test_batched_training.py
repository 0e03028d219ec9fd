"""Tests of `sane_hf.tasks.batched_training`: a group trained as one computation matches each member trained alone
with `torch.optim` (the reference), and a member's dropout masks and batch order are its own."""

import dataclasses

import pytest
import torch

from sane_hf.tasks import (
    TaskSplit,
    evaluate_split,
    load_task,
    make_optimizer,
    supports_batched_training,
    train_batched,
    train_epoch,
)
from sane_hf.zoo_models import build_zoo_model


EPOCHS, BATCH = 2, 32
CNN = {"in_channels": 1, "input_size": 8, "padding": "auto", "num_classes": 10}


@pytest.fixture(scope="module")
def small_digits():
    """digits with 96 training images (3 mini-batches per epoch), so each case runs in well under a second."""
    task = load_task("digits", seed=0)
    return dataclasses.replace(task, train=TaskSplit(task.train.images[:96], task.train.labels[:96]))


def _models(seeds, dropout=0.0):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_zoo_model("cnn_s", activation="tanh", dropout=dropout, **CNN))
    return models


def _train_batched(models, task, name, lrs, wds, dropouts, seeds):
    return list(
        train_batched(
            models,
            models[dropouts.index(max(dropouts))].module_list,
            False,
            task,
            optimizer=name,
            lrs=lrs,
            weight_decays=wds,
            momentum=0.9,
            dropouts=dropouts,
            epochs=EPOCHS,
            batch_size=BATCH,
            order_generators=[torch.Generator().manual_seed(100 + s) for s in seeds],
            dropout_generators=[torch.Generator().manual_seed(200 + s) for s in seeds],
        )
    )


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_group_matches_each_member_trained_alone_with_torch_optim(small_digits, name):
    seeds, lrs, wds = [0, 1], [1e-2, 3e-3], [0.0, 0.1]
    group = _models(seeds)
    history = _train_batched(group, small_digits, name, lrs, wds, [0.0, 0.0], seeds)
    assert [epoch for epoch, *_ in history] == list(range(EPOCHS + 1))
    for m, (seed, alone) in enumerate(zip(seeds, _models(seeds))):
        optimizer = make_optimizer(name, alone.parameters(), lrs[m], wds[m], momentum=0.9)
        order = torch.Generator().manual_seed(100 + seed)
        for epoch in range(EPOCHS + 1):
            if epoch:
                train_epoch(alone, small_digits.train, optimizer, BATCH, generator=order)
            _, train, val, test = history[epoch]
            for split, metrics in (("train", train), ("val", val), ("test", test)):
                reference = evaluate_split(alone, *small_digits.split(split))
                assert metrics[m]["acc"] == pytest.approx(reference["acc"], abs=1 / 300)
                assert metrics[m]["loss"] == pytest.approx(reference["loss"], rel=1e-4)
        # After the last epoch the group's weights were copied back into its models.
        for got, want in zip(group[m].parameters(), alone.parameters()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert not torch.equal(next(group[m].parameters()), next(_models([seed])[0].parameters()))


def test_a_members_dropout_and_order_do_not_depend_on_the_other_members(small_digits):
    def train(seeds):
        models = _models(seeds, dropout=0.2)
        _train_batched(models, small_digits, "sgd", [1e-2] * len(seeds), [0.0] * len(seeds), [0.2] * len(seeds), seeds)
        return models[0].state_dict()

    with_one, with_other = train([0, 1]), train([0, 2])
    for key in with_one:
        torch.testing.assert_close(with_one[key], with_other[key], rtol=0, atol=1e-6)
    alone_without_dropout = _models([0])[0]
    _train_batched([alone_without_dropout], small_digits, "sgd", [1e-2], [0.0], [0.0], [0])
    assert not torch.allclose(
        with_one["module_list.0.weight"], alone_without_dropout.state_dict()["module_list.0.weight"]
    )


def test_what_the_batched_trainer_runs():
    plain = _models([0])[0]
    assert supports_batched_training(plain, plain.module_list)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert not supports_batched_training(grouped, grouped)
    with_batchnorm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    assert not supports_batched_training(with_batchnorm, with_batchnorm)
    with_buffer = _models([0])[0]
    with_buffer.register_buffer("running_scale", torch.ones(1))
    assert not supports_batched_training(with_buffer, with_buffer.module_list)


def test_members_with_different_shapes_are_refused(small_digits):
    torch.manual_seed(0)
    narrow = build_zoo_model("mlp", in_features=64, num_classes=10, hidden_sizes=[4])
    wide = build_zoo_model("mlp", in_features=64, num_classes=10, hidden_sizes=[8])
    with pytest.raises(RuntimeError, match="identical parameter shapes"):
        next(
            train_batched(
                [narrow, wide],
                narrow.module_list,
                True,
                small_digits,
                optimizer="sgd",
                lrs=[0.1, 0.1],
                weight_decays=[0.0, 0.0],
                momentum=0.9,
                dropouts=[0.0, 0.0],
                epochs=1,
                batch_size=BATCH,
                order_generators=[torch.Generator(), torch.Generator()],
                dropout_generators=[torch.Generator(), torch.Generator()],
            )
        )
