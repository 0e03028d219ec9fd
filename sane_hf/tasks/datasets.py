"""Image-classification tasks that zoo models are trained and evaluated on, as in-memory tensors.

A zoo model is tiny and its data is small, so a task is held as plain tensors (`TaskData`): standardized float32
images `[N, C, H, W]` and int64 labels for a train, a validation and a test split. Training then indexes tensors
directly instead of going through a `DataLoader`, which on the project's 2-core machines is the fastest option
(worker processes cost more than they save on a 2-core machine).

Two sources:

- `"digits"`: scikit-learn's `load_digits` (1,797 8x8 grayscale images, 10 classes). It ships inside scikit-learn,
  so it is the embedded, offline default task (split 1000/400/397).
- `"digits32"`: the same images and split, bilinearly upsampled to 32x32 and repeated over 3 channels: an offline
  stand-in with CIFAR's input shape, so CIFAR-style ResNet zoos (`scripts/configs/zoo_resnet_tiny.yaml`) run without
  a download. It is no harder than `"digits"`; it only exercises the 32x32, 3-channel path.
- Any other name: an image-classification dataset loaded with `datasets.load_dataset` (a Hub id such as
  `"uoft-cs/cifar10"` or a local folder of parquet files), with an image column and an integer label column.

Pixels are standardized per channel with statistics of the *train* split (or the published constants of MNIST,
CIFAR-10 and CIFAR-100, docs/zoo_dataset_format.md). Without standardization, most
sigmoid nets of an early digits zoo stayed stuck at one class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch


logger = logging.getLogger(__name__)

# Tasks that ship with the package's dependencies and need no download.
EMBEDDED_TASKS = ("digits", "digits32")
# Train / validation / test sizes of the digits task; they add up to the 1,797 images of `load_digits`.
DIGITS_SPLIT_SIZES = (1000, 400, 397)

# Per-channel (mean, std) of pixels in [0, 1]. CIFAR values are those of the SANE zoo generators (docs/zoo_dataset_format.md);
# MNIST's are the usual torchvision-example constants. Keys are matched against the dataset name without its
# organization and lower-cased ("uoft-cs/cifar10" -> "cifar10").
KNOWN_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NORMALIZATIONS = ("auto", "train", "none")

# Column names tried in order when `image_column` / `label_column` are not given (HF datasets use all of them:
# MNIST "image"/"label", CIFAR-10 "img"/"label", CIFAR-100 "img"/"fine_label").
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")
# Images are decoded and converted in chunks, so peak memory holds one chunk of PIL images at a time.
_DECODE_CHUNK = 1024


# The splits of a task, in this order (a tokenized zoo's splits are named differently: `sane_hf.constants.SPLIT_NAMES`).
TASK_SPLITS = ("train", "val", "test")


class TaskSplit(NamedTuple):
    """One split of a task: `images` float32 `[N, C, H, W]` (standardized) and `labels` int64 `[N]`."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return int(self.labels.shape[0])


@dataclass
class TaskData:
    """An image-classification task held in memory: three standardized splits and what describes them.

    Args:
        name (`str`):
            The task name given to `load_task` (`"digits"`, a Hub dataset id or a local folder).
        train (`TaskSplit`):
            Training images and labels.
        val (`TaskSplit`):
            Validation images and labels.
        test (`TaskSplit`):
            Test images and labels.
        num_classes (`int`):
            Number of classes; labels are in `[0, num_classes)`.
        mean (`tuple[float, ...]`):
            Per-channel mean subtracted from the raw pixels (raw scale: [0, 16] for digits, [0, 1] otherwise).
        std (`tuple[float, ...]`):
            Per-channel standard deviation the centered pixels were divided by.
        normalization (`str`):
            Where `mean`/`std` come from: `"train"` (train split statistics), `"known"` (published constants) or
            `"none"`.
        seed (`int`):
            Seed of the split(s) carved at random.
        source (`str`):
            Human-readable origin of the data, e.g. `"sklearn.datasets.load_digits"`.

    Example:

    ```python
    >>> from sane_hf.tasks import load_task
    >>> task = load_task("digits")
    >>> task.input_shape, task.num_classes, task.split_sizes
    ((1, 8, 8), 10, {'train': 1000, 'val': 400, 'test': 397})
    ```
    """

    name: str
    train: TaskSplit
    val: TaskSplit
    test: TaskSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str
    seed: int
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape `(C, H, W)` of one image."""
        return tuple(int(s) for s in self.train.images.shape[1:])

    @property
    def split_sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {split: self.split(split).num_samples for split in TASK_SPLITS}

    def split(self, name: str) -> TaskSplit:
        """Return the split called `name` (`"train"`, `"val"` or `"test"`)."""
        if name not in TASK_SPLITS:
            raise ValueError(f"TaskData.split: `name` must be one of {list(TASK_SPLITS)}, got {name!r}.")
        return getattr(self, name)

    def info(self) -> dict[str, Any]:
        """JSON-serializable description of the task (written into a zoo's `zoo_config.json`)."""
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "split_sizes": self.split_sizes,
            "seed": self.seed,
            "normalization": self.normalization,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def load_task(
    name: str,
    seed: int = 0,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    normalization: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int | None = None,
    **load_dataset_kwargs: Any,
) -> TaskData:
    """Load an image-classification task as standardized in-memory tensors.

    `"digits"` is scikit-learn's `load_digits`, split 1000/400/397 (train/val/test) with a *stratified* seeded
    split, so every split holds each class in proportion; `"digits32"` is the same, upsampled to 3x32x32. Any other `name` is loaded with
    `datasets.load_dataset(name, **load_dataset_kwargs)`: its `"train"` split is required, a
    `"validation"`/`"valid"`/`"val"` split and a `"test"` split are used when present, and otherwise carved from the
    train split at random (seeded, not stratified), as the zoo generators carve CIFAR's validation set
    (docs/zoo_dataset_format.md).

    Args:
        name (`str`):
            `"digits"`, a Hub dataset id or a local dataset folder (e.g. `data/<split>-*.parquet`).
        seed (`int`, *optional*, defaults to 0):
            Seed of the random splits.
        image_column (`str`, *optional*):
            Column holding the images (PIL images or arrays `[H, W]` / `[H, W, C]`). By default the first of
            `"image"`, `"img"`, `"pixel_values"` that exists.
        label_column (`str`, *optional*):
            Column holding integer class labels. By default the first of `"label"`, `"labels"`, `"fine_label"`.
        normalization (`str`, *optional*, defaults to `"auto"`):
            `"auto"`: the known constants for MNIST/CIFAR-10/CIFAR-100 (`KNOWN_NORMALIZATIONS`), else train-split
            statistics; `"train"`: always per-channel train statistics; `"none"`: raw pixels in [0, 1] (digits:
            [0, 16]). Digits always use train statistics under `"auto"`.
        val_fraction (`float`, *optional*, defaults to 0.1):
            Fraction of the train split carved out as validation set when the dataset has none.
        test_fraction (`float`, *optional*, defaults to 0.1):
            Fraction of the train split carved out as test set when the dataset has none.
        image_size (`int`, *optional*):
            Resize every image to `image_size x image_size` (bilinear) before conversion; needed when images have
            different sizes. Not supported for digits.
        load_dataset_kwargs:
            Passed on to `datasets.load_dataset` (e.g. `revision`, `cache_dir`, `data_files`).

    Returns:
        `TaskData`: the three splits, `num_classes`, `input_shape` and the normalization statistics.

    Raises:
        `ValueError`: unknown task, missing split or column, labels that are not non-negative integers, or images
        of mixed sizes without `image_size`.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"load_task: `normalization` must be one of {list(NORMALIZATIONS)}, got {normalization!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"load_task: `name` must be 'digits', a Hub dataset id or a local folder, got {name!r}.")
    if name in EMBEDDED_TASKS:
        if image_size is not None:
            raise ValueError(f"load_task: `image_size` is not supported for {name!r} (its size is fixed).")
        return _load_digits(seed, normalization, upsample=name == "digits32")
    return _load_hf_dataset(
        name,
        seed,
        image_column=image_column,
        label_column=label_column,
        normalization=normalization,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        image_size=image_size,
        load_dataset_kwargs=load_dataset_kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------------------


def _load_digits(seed: int, normalization: str, upsample: bool = False) -> TaskData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.astype(np.float32).reshape(-1, 1, 8, 8)
    if upsample:
        # "digits32": deterministic bilinear 4x upsampling, grey repeated over RGB (CIFAR's [3, 32, 32] shape).
        upsampled = torch.nn.functional.interpolate(
            torch.from_numpy(images), size=(32, 32), mode="bilinear", align_corners=False
        )
        images = np.ascontiguousarray(upsampled.repeat(1, 3, 1, 1).numpy())
    labels = labels.astype(np.int64)
    n_train, n_val, n_test = DIGITS_SPLIT_SIZES
    indices = np.arange(len(labels))
    # Stratified, so the 397 test images keep the class balance: accuracies of different zoos stay comparable.
    train_idx, rest_idx = train_test_split(indices, train_size=n_train, stratify=labels, random_state=seed)
    val_idx, test_idx = train_test_split(
        rest_idx, train_size=n_val, test_size=n_test, stratify=labels[rest_idx], random_state=seed
    )
    # "auto" means train statistics for digits: there are no published constants to prefer.
    mode = "none" if normalization == "none" else "train"
    splits = {
        split: (images[np.sort(idx)], labels[np.sort(idx)])
        for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
    }
    return _assemble(
        "digits32" if upsample else "digits",
        splits,
        num_classes=10,
        mode=mode,
        known=None,
        seed=seed,
        source="sklearn.datasets.load_digits",
    )


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------------


def _pick_column(columns: list[str], requested: str | None, candidates: tuple[str, ...], what: str, name: str) -> str:
    if requested is not None:
        if requested not in columns:
            raise ValueError(
                f"load_task({name!r}): the {what} column {requested!r} does not exist; the dataset has columns "
                f"{columns}. Pass `{what}_column=` one of them."
            )
        return requested
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ValueError(
        f"load_task({name!r}): found no {what} column; expected one of {list(candidates)}, the dataset has columns "
        f"{columns}. Pass `{what}_column=` to name it."
    )


def _to_array(value: Any, mode: str | None, image_size: int | None) -> np.ndarray:
    """One image (PIL image or array-like) -> array `[C, H, W]`, uint8 or float32."""
    from PIL import Image

    if isinstance(value, Image.Image):
        if mode is not None and value.mode != mode:
            value = value.convert(mode)
        if image_size is not None and value.size != (image_size, image_size):
            value = value.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(value)
    else:
        array = np.asarray(value)
        if image_size is not None and array.shape[:2] != (image_size, image_size):
            raise ValueError(f"`image_size` only resizes PIL images; got an array image of shape {list(array.shape)}.")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    if array.ndim == 3:
        return array
    raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W]; got an array of shape {list(array.shape)}.")


def _image_mode(value: Any) -> str | None:
    """PIL mode every image is converted to: "RGB" for color datasets, "L" for grayscale ones."""
    from PIL import Image

    if not isinstance(value, Image.Image):
        return None
    return "L" if value.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


def _decode_split(dataset: Any, image_column: str, label_column: str, name: str, split: str, image_size: int | None):
    """A `datasets.Dataset` -> (images `[N, C, H, W]` float32 in [0, 1] or raw floats, labels int64 `[N]`)."""
    labels = np.asarray(dataset[label_column])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"load_task({name!r}): the label column {label_column!r} of split {split!r} must hold one integer class "
            f"per image, got values of dtype {labels.dtype} and shape {list(labels.shape)}. Encode string labels "
            "first, e.g. `dataset.class_encode_column(...)`."
        )
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"load_task({name!r}): the label column {label_column!r} of split {split!r} holds negative labels "
            f"(min {labels.min()}); expected classes in [0, num_classes)."
        )
    if len(labels) == 0:
        raise ValueError(f"load_task({name!r}): split {split!r} is empty.")
    mode = _image_mode(dataset[0][image_column])
    chunks: list[np.ndarray] = []
    shapes: set[tuple[int, ...]] = set()
    for batch in dataset.select_columns([image_column]).iter(batch_size=_DECODE_CHUNK):
        arrays = [_to_array(value, mode, image_size) for value in batch[image_column]]
        shapes.update(a.shape for a in arrays)
        if len(shapes) > 1:
            raise ValueError(
                f"load_task({name!r}): images of split {split!r} have different shapes {sorted(shapes)}; pass "
                "`image_size=` to resize them to one size."
            )
        chunks.append(np.stack(arrays))
    images = np.concatenate(chunks)
    # 8-bit images are scaled to [0, 1] (the convention of the normalization constants); float images are kept.
    images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    return images, labels.astype(np.int64)


def _known_normalization_key(name: str) -> str | None:
    key = Path(name.rstrip("/")).name.lower().replace("-", "").replace("_", "")
    return key if key in KNOWN_NORMALIZATIONS else None


def _carve(length: int, fraction: float, generator: torch.Generator, what: str, name: str) -> tuple[np.ndarray, ...]:
    """Random split of `range(length)` into (kept, carved) with `round(fraction * length)` carved indices."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"load_task({name!r}): `{what}_fraction` must be in (0, 1), got {fraction!r}.")
    n_carved = max(1, round(fraction * length))
    if n_carved >= length:
        raise ValueError(f"load_task({name!r}): the train split ({length} images) is too small to carve a {what} set.")
    perm = torch.randperm(length, generator=generator).numpy()
    return np.sort(perm[n_carved:]), np.sort(perm[:n_carved])


def _load_hf_dataset(
    name: str,
    seed: int,
    *,
    image_column: str | None,
    label_column: str | None,
    normalization: str,
    val_fraction: float,
    test_fraction: float,
    image_size: int | None,
    load_dataset_kwargs: dict[str, Any],
) -> TaskData:
    import datasets

    try:
        dataset_dict = datasets.load_dataset(name, **load_dataset_kwargs)
    except (FileNotFoundError, ConnectionError) as error:
        # Offline, an unknown Hub id surfaces as a ConnectionError; a missing local folder as FileNotFoundError.
        raise ValueError(
            f"load_task: unknown task {name!r}: it is not one of the embedded tasks {list(EMBEDDED_TASKS)}, and "
            f"datasets.load_dataset could not load it as a Hub dataset id or local folder ({error})."
        ) from error
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise ValueError(
            f"load_task({name!r}): expected a DatasetDict with splits, got {type(dataset_dict).__name__}."
        )
    available = list(dataset_dict)
    if "train" not in dataset_dict:
        raise ValueError(f"load_task({name!r}): the dataset needs a 'train' split; it has splits {available}.")
    train = dataset_dict["train"]
    columns = list(train.column_names)
    image_column = _pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image", name)
    label_column = _pick_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label", name)
    val_name = next((split for split in VALIDATION_SPLIT_NAMES if split in dataset_dict), None)

    def decode(split_name: str) -> tuple[np.ndarray, np.ndarray]:
        split_columns = list(dataset_dict[split_name].column_names)
        for column in (image_column, label_column):
            if column not in split_columns:
                raise ValueError(
                    f"load_task({name!r}): split {split_name!r} has no column {column!r}; it has {split_columns}."
                )
        return _decode_split(dataset_dict[split_name], image_column, label_column, name, split_name, image_size)

    train_images, train_labels = decode("train")
    generator = torch.Generator().manual_seed(seed)
    if "test" in dataset_dict:
        test = decode("test")
    else:
        logger.warning("%s has no 'test' split; carving %.0f%% of 'train' as test set.", name, 100 * test_fraction)
        keep, carved = _carve(len(train_labels), test_fraction, generator, "test", name)
        test = (train_images[carved], train_labels[carved])
        train_images, train_labels = train_images[keep], train_labels[keep]
    if val_name is not None:
        val = decode(val_name)
    else:
        logger.info("%s has no validation split; carving %.0f%% of 'train' as val set.", name, 100 * val_fraction)
        keep, carved = _carve(len(train_labels), val_fraction, generator, "val", name)
        val = (train_images[carved], train_labels[carved])
        train_images, train_labels = train_images[keep], train_labels[keep]
    splits = {"train": (train_images, train_labels), "val": val, "test": test}

    shapes = {split: list(images.shape[1:]) for split, (images, _) in splits.items()}
    if len({tuple(s) for s in shapes.values()}) > 1:
        raise ValueError(f"load_task({name!r}): splits have different image shapes {shapes}; pass `image_size=`.")
    feature = train.features.get(label_column)
    num_classes = getattr(feature, "num_classes", None)
    max_label = max(int(labels.max()) for _, labels in splits.values())
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(
            f"load_task({name!r}): label {max_label} in column {label_column!r} is out of range for its "
            f"{num_classes} classes."
        )

    known = None
    mode = normalization
    if normalization == "auto":
        key = _known_normalization_key(name)
        channels = train_images.shape[1]
        if key is not None and len(KNOWN_NORMALIZATIONS[key][0]) == channels:
            known, mode = KNOWN_NORMALIZATIONS[key], "known"
        else:
            mode = "train"
    return _assemble(name, splits, num_classes=num_classes, mode=mode, known=known, seed=seed, source=name)


# ---------------------------------------------------------------------------------------------------------------
# Standardization
# ---------------------------------------------------------------------------------------------------------------


def _assemble(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int,
    mode: str,
    known: tuple[tuple[float, ...], tuple[float, ...]] | None,
    seed: int,
    source: str,
) -> TaskData:
    train_images = splits["train"][0]
    channels = train_images.shape[1]
    if mode == "known":
        mean, std = (np.asarray(v, dtype=np.float64) for v in known)
    elif mode == "train":
        # Channel-wise over all train pixels (float64 to keep the sums exact enough for 50k CIFAR images).
        mean = train_images.mean(axis=(0, 2, 3), dtype=np.float64)
        std = train_images.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(channels), np.ones(channels)
    mean32 = mean.astype(np.float32).reshape(1, channels, 1, 1)
    std32 = std.astype(np.float32).reshape(1, channels, 1, 1)

    def standardize(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray((images - mean32) / std32, dtype=np.float32))

    built = {
        split: TaskSplit(standardize(images), torch.from_numpy(labels)) for split, (images, labels) in splits.items()
    }
    task = TaskData(
        name=name,
        train=built["train"],
        val=built["val"],
        test=built["test"],
        num_classes=int(num_classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        normalization=mode,
        seed=seed,
        source=source,
    )
    if not all(math.isfinite(v) for v in (*task.mean, *task.std)):
        raise ValueError(f"load_task({name!r}): non-finite normalization statistics {task.mean}, {task.std}.")
    logger.info("Loaded task %s: %s images %s, %d classes", name, task.split_sizes, task.input_shape, num_classes)
    return task
