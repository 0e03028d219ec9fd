"""Tests of `sane_hf.tasks`: the digits task, image datasets loaded through `datasets` (offline), training utilities."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sane_hf.tasks import (
    DIGITS_SPLIT_SIZES,
    KNOWN_NORMALIZATIONS,
    TaskData,
    evaluate_split,
    load_task,
    make_optimizer,
    train_epoch,
)
from sane_hf.zoo_models import build_zoo_model


# Decoding image datasets needs Pillow (the `datasets[vision]` extra).
requires_pillow = pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="Pillow is not installed")


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_task("digits", seed=0)


# ---------------------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------------------


def test_digits_splits_shapes_and_dtypes(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.split_sizes == dict(zip(("train", "val", "test"), DIGITS_SPLIT_SIZES))
    for split in ("train", "val", "test"):
        images, labels = digits.split(split)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (digits.split(split).num_samples, 1, 8, 8)
        assert images.is_contiguous()
        assert int(labels.min()) == 0 and int(labels.max()) == 9


def test_digits_splits_partition_the_dataset_and_are_stratified(digits):
    from sklearn.datasets import load_digits

    raw, raw_labels = load_digits(return_X_y=True)
    mean, std = digits.mean[0], digits.std[0]
    rows, labels = [], []
    for split in ("train", "val", "test"):
        images, split_labels = digits.split(split)
        rows.append(np.rint(images.double().numpy().reshape(len(split_labels), 64) * std + mean))
        labels.append(split_labels.numpy())
    # Un-standardized and put together, the three splits are exactly the 1,797 images (as a multiset).
    ours = np.concatenate([np.concatenate(rows), np.concatenate(labels)[:, None]], axis=1)
    reference = np.concatenate([raw, raw_labels[:, None]], axis=1)
    assert np.array_equal(np.unique(ours, axis=0, return_counts=True)[1].sum(), len(reference))
    assert np.array_equal(ours[np.lexsort(ours.T[::-1])], reference[np.lexsort(reference.T[::-1])])
    # Stratified: every class has its share of the 397 test images, give or take one.
    counts = torch.bincount(digits.test.labels, minlength=10).numpy()
    expected = np.bincount(raw_labels, minlength=10) / len(raw_labels) * DIGITS_SPLIT_SIZES[2]
    assert np.all(np.abs(counts - expected) <= 1.0)


def test_digits_standardized_with_train_statistics(digits):
    from sklearn.datasets import load_digits

    assert digits.normalization == "train"
    train = digits.train.images.double()
    assert abs(float(train.mean())) < 1e-6
    assert abs(float(train.std(unbiased=False)) - 1.0) < 1e-6
    # The statistics are those of the raw train pixels, and val/test are standardized with them (not their own).
    raw = load_digits().images
    assert 0.0 < digits.mean[0] < 16.0 and digits.std[0] > 1.0
    assert abs(float(digits.test.images.double().mean())) > 1e-4
    assert np.isclose(raw.mean(), digits.mean[0], atol=0.2)


def test_digits_split_is_seeded(digits):
    again = load_task("digits", seed=0)
    for split in ("train", "val", "test"):
        assert torch.equal(again.split(split).images, digits.split(split).images)
        assert torch.equal(again.split(split).labels, digits.split(split).labels)
    other = load_task("digits", seed=1)
    assert not torch.equal(other.test.labels, digits.test.labels)


def test_digits_info_is_json(digits):
    info = json.loads(json.dumps(digits.info()))
    assert info["name"] == "digits"
    assert info["num_classes"] == 10
    assert info["input_shape"] == [1, 8, 8]
    assert info["split_sizes"] == {"train": 1000, "val": 400, "test": 397}


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="unknown task 'no_such_task_xyz'"):
        load_task("no_such_task_xyz")
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        load_task("digits", normalization="minmax")
    with pytest.raises(ValueError, match="image_size"):
        load_task("digits", image_size=16)
    with pytest.raises(ValueError, match="`name` must be"):
        load_task("")


# ---------------------------------------------------------------------------------------------------------------
# Image datasets through `datasets.load_dataset` (a tiny local parquet dataset; offline)
# ---------------------------------------------------------------------------------------------------------------


def _images(n: int, size: int, mode: str, seed: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    arrays = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    return [Image.fromarray(a if channels == 3 else a[..., 0], mode=mode) for a in arrays]


def write_image_dataset(
    folder: Path,
    *,
    splits: dict[str, int],
    size: int = 8,
    mode: str = "RGB",
    image_column: str = "image",
    label_column: str = "label",
    num_classes: int = 3,
) -> Path:
    """A Hub-style dataset folder: data/<split>-00000-of-00001.parquet with PIL images and integer labels."""
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate(splits.items()):
        dataset = datasets.Dataset.from_dict(
            {image_column: _images(n, size, mode, seed=offset), label_column: [i % num_classes for i in range(n)]}
        )
        assert isinstance(dataset.features[image_column], datasets.Image)
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@requires_pillow
def test_hf_image_dataset_with_val_carved_from_train(tmp_path):
    folder = write_image_dataset(tmp_path / "tiny_rgb", splits={"train": 40, "test": 12})
    task = load_task(str(folder), seed=0)
    assert task.input_shape == (3, 8, 8)
    assert task.num_classes == 3
    assert task.split_sizes == {"train": 36, "val": 4, "test": 12}
    assert task.normalization == "train"
    # Channel-wise standardization with train statistics.
    train = task.train.images.double()
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6)
    # The pixels are the images' bytes / 255, standardized.
    import datasets

    test_images = datasets.load_dataset(str(folder))["test"]["image"]
    raw = np.stack([np.asarray(img) for img in test_images]).transpose(0, 3, 1, 2) / 255.0
    restored = (
        task.test.images.double().numpy() * np.asarray(task.std)[:, None, None] + np.asarray(task.mean)[:, None, None]
    )
    assert np.allclose(restored, raw, atol=1e-5)
    # The carved split is seeded.
    again = load_task(str(folder), seed=0)
    assert torch.equal(again.val.images, task.val.images)
    assert not torch.equal(load_task(str(folder), seed=1).val.images, task.val.images)


@requires_pillow
def test_hf_image_dataset_other_column_names_grayscale_and_validation_split(tmp_path):
    folder = write_image_dataset(
        tmp_path / "tiny_gray",
        splits={"train": 20, "validation": 6, "test": 5},
        mode="L",
        image_column="img",
        label_column="labels",
        num_classes=4,
    )
    task = load_task(str(folder))
    assert task.input_shape == (1, 8, 8)
    assert task.split_sizes == {"train": 20, "val": 6, "test": 5}
    assert task.num_classes == 4
    explicit = load_task(str(folder), image_column="img", label_column="labels", image_size=4, normalization="none")
    assert explicit.input_shape == (1, 4, 4)
    assert explicit.mean == (0.0,) and explicit.std == (1.0,)
    assert 0.0 <= float(explicit.train.images.min()) and float(explicit.train.images.max()) <= 1.0


@requires_pillow
def test_hf_image_dataset_known_normalization(tmp_path):
    folder = write_image_dataset(tmp_path / "cifar10", splits={"train": 20, "test": 5})
    task = load_task(str(folder))
    assert task.normalization == "known"
    assert task.mean == pytest.approx(KNOWN_NORMALIZATIONS["cifar10"][0])
    assert task.std == pytest.approx(KNOWN_NORMALIZATIONS["cifar10"][1])
    assert load_task(str(folder), normalization="train").normalization == "train"


@requires_pillow
def test_hf_image_dataset_bad_input(tmp_path):
    folder = write_image_dataset(tmp_path / "tiny", splits={"train": 12, "test": 4})
    with pytest.raises(ValueError, match=r"image column 'pixels' does not exist.*\['image', 'label'\]"):
        load_task(str(folder), image_column="pixels")
    with pytest.raises(ValueError, match="found no label column; expected one of"):
        write_image_dataset(tmp_path / "nolabel", splits={"train": 12, "test": 4}, label_column="target")
        load_task(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match="needs a 'train' split"):
        write_image_dataset(tmp_path / "notrain", splits={"test": 4})
        load_task(str(tmp_path / "notrain"))
    with pytest.raises(ValueError, match="unknown task"):
        load_task(str(tmp_path / "does_not_exist"))


@requires_pillow
def test_hf_image_dataset_mixed_sizes_need_image_size(tmp_path):
    import datasets

    (tmp_path / "mixed" / "data").mkdir(parents=True)
    images = _images(4, 8, "RGB", 0) + _images(4, 6, "RGB", 1)
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 4})
    dataset.to_parquet(str(tmp_path / "mixed" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="different shapes.*image_size"):
        load_task(str(tmp_path / "mixed"), test_fraction=0.25)
    task = load_task(str(tmp_path / "mixed"), image_size=6, test_fraction=0.25, val_fraction=0.2)
    assert task.input_shape == (3, 6, 6)
    assert sum(task.split_sizes.values()) == 8


# ---------------------------------------------------------------------------------------------------------------
# Training utilities
# ---------------------------------------------------------------------------------------------------------------


def test_make_optimizer():
    params = list(torch.nn.Linear(3, 2).parameters())
    sgd = make_optimizer("sgd", params, lr=0.1, weight_decay=1e-4, momentum=0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5
    assert isinstance(make_optimizer("adam", params, lr=1e-3), torch.optim.Adam)
    adamw = make_optimizer("adamw", params, lr=1e-3, weight_decay=0.1)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.1
    with pytest.raises(ValueError, match=r"must be one of \['sgd', 'adam', 'adamw'\], got 'rmsprop'"):
        make_optimizer("rmsprop", params, lr=1e-3)
    with pytest.raises(ValueError, match="`lr` must be"):
        make_optimizer("sgd", params, lr=0.0)
    with pytest.raises(ValueError, match="`weight_decay` must be"):
        make_optimizer("sgd", params, lr=0.1, weight_decay=-1.0)


def _train(digits, seed: int, epochs: int) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(seed)
    model = build_zoo_model("mlp", hidden_sizes=[32], dropout=0.1)
    optimizer = make_optimizer("adam", model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    history = [train_epoch(model, digits.train, optimizer, batch_size=64, generator=generator) for _ in range(epochs)]
    return model, history


def test_training_reduces_loss_and_is_seeded(digits):
    torch.manual_seed(0)
    initial = evaluate_split(build_zoo_model("mlp", hidden_sizes=[32], dropout=0.1), *digits.val)
    model, history = _train(digits, seed=0, epochs=2)
    after = evaluate_split(model, *digits.val)
    assert history[-1]["loss"] < history[0]["loss"]
    assert after["loss"] < initial["loss"] - 1.0
    assert after["acc"] > 0.7
    # Same seeds (global RNG for dropout, generator for the batch order): the same model, bit for bit.
    again, _ = _train(digits, seed=0, epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other, _ = _train(digits, seed=1, epochs=1)
    assert not torch.equal(next(iter(other.state_dict().values())), next(iter(model.state_dict().values())))


def test_evaluate_matches_manual_computation_and_restores_mode(digits):
    torch.manual_seed(0)
    model = build_zoo_model("cnn_s", input_size=8, padding="auto", dropout=0.5)
    model.train()
    metrics = evaluate_split(model, *digits.test)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(digits.test.images)
    expected_loss = torch.nn.functional.cross_entropy(logits, digits.test.labels).item()
    expected_acc = (logits.argmax(1) == digits.test.labels).float().mean().item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["acc"] == pytest.approx(expected_acc)
    chunked = evaluate_split(model, *digits.test, batch_size=50)
    assert chunked["loss"] == pytest.approx(metrics["loss"], rel=1e-5) and chunked["acc"] == metrics["acc"]
    with pytest.raises(ValueError, match="expected images"):
        evaluate_split(model, digits.test.images, digits.val.labels)
