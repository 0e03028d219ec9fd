"""Readers of model zoos: they list the models of a zoo and yield its checkpoints one at a time.

A model zoo is a population of trained networks of one architecture, with a checkpoint per epoch and the metrics
of each epoch (docs/zoo_dataset_format.md). Three layouts are read:

* `"sane_hf"`: the zoos `sane_hf` builds (`zoo_config.json`, `models/<model_id>/{params.json, metrics.jsonl,
  checkpoints/epoch_<E:04d>.safetensors, DONE}`), see `SaneHfZooReader`;
* `"modelzoo"`: the original model zoos (modelzoos.cc, ray-tune trial folders with `params.json`, `result.json` and
  `checkpoint_<E>/checkpoints` pickles; docs/zoo_dataset_format.md), see `ModelZooReader`;
* `"models"`: independent models, as Hub repo ids or local folders with `model.safetensors` / `pytorch_model.bin`
  (e.g. models saved with `ZooModel.save_pretrained`), see `HubModelsReader`.

Every reader lists models in sorted order (the original used the unsorted `Path.iterdir()` order, docs/zoo_dataset_format.md
[quirk]), loads one checkpoint at a time (a ResNet-18 zoo does not fit in memory), and applies the original's
filtering (docs/zoo_dataset_format.md): a checkpoint with a NaN/Inf or any |w| > `weight_threshold` is dropped, and a model
left without checkpoints is dropped; every drop is counted in `reader.report` (a `FilterReport`), never silent.

Key order. SANE's token order is the state_dict order (docs/method.md#tokenization), but safetensors files come back with
their keys sorted by name (`module_list.11` before `module_list.3`). Readers therefore put every state_dict in the
order of its architecture's `state_dict()` (built on the meta device from `architecture` + `model_kwargs`); pickles
keep their stored order; safetensors of unknown architectures fall back to a natural sort (numbers as numbers,
`weight` before `bias` before BatchNorm buffers), with a warning.

Same architecture means the same ordered list of tensor shapes and dtypes; key *names* may differ. The zoo CNNs,
like upstream's, only have Dropout modules when `dropout > 0`, which shifts the `module_list` indices, so one zoo
holds checkpoints with `module_list.{0,3,6,9,11}` and `module_list.{0,4,8,11,14}` keys. Records keep their own
names; the converter maps them onto the reference's keys by position, which gives exactly the tokens of the
original's key-order walk.

Bad input raises `ZooFormatError` (a `ValueError`) with one line naming the file, what was expected and what was
found. In particular, a checkpoint whose ordered shapes differ from the first checkpoint read (another architecture
mixed into the zoo) is an error, not a silent drop: a mixed zoo is a mistake in how the zoo was assembled, and
dropping would quietly shrink a split.

Pickled checkpoints are only ever loaded with `torch.load(..., map_location="cpu", weights_only=True)`; a pickle that
references code (or anything beyond tensors and containers) is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import huggingface_hub
import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file

from ..utils.checks import weights_only_rejection
from ..utils.io import json_safe, read_json, verify_file_checksum
from ..zoo_models import build_zoo_model, zoo_params_to_kwargs
from .zoo_format import (
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    DONE_CHECKSUMS_KEY,
    DONE_NAME,
    METRICS_NAME,
    MODELS_DIR,
    PARAMS_NAME,
    ZOO_CONFIG_NAME,
    ZOO_FORMAT,
    ZOO_FORMAT_VERSION,
    checkpoint_name,
    read_done,
)


logger = logging.getLogger(__name__)

ZooFormat = Literal["sane_hf", "modelzoo", "models"]
ZOO_FORMATS = get_args(ZooFormat)

# params.json keys that describe the model rather than a hyper-parameter property.
_SANE_HF_NON_PROPERTIES = {"model_id", "index", "architecture", "model_kwargs", "task"}
# Renamed so that the number of training epochs is not confused with a checkpoint's `epoch`.
_SANE_HF_RENAMES = {"epochs": "num_epochs"}

# The original model zoos (docs/zoo_dataset_format.md).
_MODELZOO_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
_MODELZOO_CHECKPOINT_FILE = "checkpoints"
# `params.json` ("a::b" keys) -> property name; the same names our own zoos use, so datasets of both kinds share a
# schema. Other keys (paths, devices, ray settings) are not properties of a model.
_MODELZOO_HYPERPARAMETERS = {
    "seed": "seed",
    "optim::lr": "lr",
    "optim::wd": "weight_decay",
    "optim::optimizer": "optimizer",
    "optim::momentum": "momentum",
    "optim::scheduler": "scheduler",
    "model::type": "model_type",
    "model::init_type": "init",
    "model::nlin": "activation",
    "model::dropout": "dropout",
    "training::batchsize": "batch_size",
    "training::epochs_train": "num_epochs",
}
# `result.json` lines also carry ray bookkeeping (timestamps, hostnames, ...): only metrics become properties.
_RESULT_KEYS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "training_iteration")
_METRIC_SUFFIXES = ("_acc", "_loss")

# Independent models (Hub repos or local folders).
_SAFETENSORS_WEIGHTS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_WEIGHTS = "pytorch_model.bin"
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_FILES = (_SAFETENSORS_WEIGHTS, _SAFETENSORS_INDEX, _PICKLE_WEIGHTS, _PICKLE_INDEX)
_MODEL_PROPERTIES_FILE = "properties.json"
_ZOO_ARCHITECTURE_KEY = "zoo_architecture"

# Checkpoints with any |w| above this are dropped and counted like NaN ones (docs/zoo_dataset_format.md#filtering):
# far above any weight of a trained network (the original's own thresholds were 100 for CNN zoos and 15,000-25,000
# for ResNets), far below the 1e30s a corrupt or diverged checkpoint holds, whose one value would otherwise set its
# layer's normalization scale for every other checkpoint.
DEFAULT_WEIGHT_THRESHOLD = 1e6

# Filter reasons (docs/zoo_dataset_format.md).
DROP_NON_FINITE = "non_finite"
DROP_ABOVE_THRESHOLD = "above_threshold"
DROP_MISSING = "missing_checkpoint"
DROP_NO_CHECKPOINT_LEFT = "no_surviving_checkpoint"


class ZooFormatError(ValueError):
    """A zoo folder or file does not have the expected layout or content; the message names the file."""


# -------------------------------------------------------------------------------------------------------------------
# Records and reports
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class CheckpointRecord:
    """One checkpoint of a zoo member, with everything known about it.

    Args:
        model_id (`str`): the model's id within the zoo (folder name or repo id).
        epoch (`int`): training epoch of the checkpoint (0 = initialization where the zoo stores it).
        state_dict (`dict[str, torch.Tensor]`): the weights, on CPU, in the architecture's `state_dict()` order
            (the model's own key names; see the module docstring).
        properties (`dict[str, Any]`): scalar properties of this checkpoint: metrics (`test_acc`, `train_acc`,
            `val_acc`, losses, `ggap = train_acc - test_acc`, `epoch`) and the model's hyper-parameters (`seed`,
            `lr`, `optimizer`, ...).
        architecture (`str`, *optional*): zoo registry name of the architecture, if known.
        model_kwargs (`dict`, *optional*): constructor arguments, `build_zoo_model(architecture, **model_kwargs)`.
        source (`str`): the file the weights were read from.
    """

    model_id: str
    epoch: int
    state_dict: dict[str, torch.Tensor]
    properties: dict[str, Any]
    architecture: str | None
    model_kwargs: dict[str, Any] | None
    source: str


@dataclass
class ZooMember:
    """A model of a zoo, as listed (nothing but metadata is loaded).

    Args:
        model_id (`str`): id within the zoo.
        path (`Path`): the model's folder.
        checkpoints (`dict[int, Path]`): epoch -> weight file (or folder, for sharded models).
        architecture (`str`, *optional*), model_kwargs (`dict`, *optional*): see `CheckpointRecord`.
        hyperparameters (`dict[str, Any]`): scalar hyper-parameters, as properties.
    """

    model_id: str
    path: Path
    checkpoints: dict[int, Path]
    architecture: str | None = None
    model_kwargs: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> list[int]:
        return sorted(self.checkpoints)


@dataclass
class FilterReport:
    """What a reader skipped or dropped, and why (docs/zoo_dataset_format.md).

    Args:
        weight_threshold (`float`): checkpoints with any |w| above this were dropped.
        skipped_models (`list[dict]`): model folders not read at all (`{"model_id", "reason"}`; e.g. unfinished:
            no `DONE` marker).
        dropped_checkpoints (`list[dict]`): `{"model_id", "epoch", "reason"}` with reason `non_finite`,
            `above_threshold` or `missing_checkpoint` (a requested epoch that the model does not have).
        dropped_models (`list[dict]`): models left without any checkpoint (`no_surviving_checkpoint`).
        num_checkpoints_read (`int`), num_checkpoints_kept (`int`), num_models_kept (`int`): counters.
    """

    weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD
    skipped_models: list[dict[str, Any]] = field(default_factory=list)
    dropped_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    dropped_models: list[dict[str, Any]] = field(default_factory=list)
    num_checkpoints_read: int = 0
    num_checkpoints_kept: int = 0
    num_models_kept: int = 0

    def counts(self) -> dict[str, int]:
        """Number of dropped checkpoints per reason."""
        counts: dict[str, int] = {}
        for item in self.dropped_checkpoints:
            counts[item["reason"]] = counts.get(item["reason"], 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight_threshold": None if math.isinf(self.weight_threshold) else self.weight_threshold,
            "num_checkpoints_read": self.num_checkpoints_read,
            "num_checkpoints_kept": self.num_checkpoints_kept,
            "num_models_kept": self.num_models_kept,
            "dropped_checkpoint_counts": self.counts(),
            "skipped_models": list(self.skipped_models),
            "dropped_models": list(self.dropped_models),
            "dropped_checkpoints": list(self.dropped_checkpoints),
        }

    def summary(self) -> str:
        """A one-line human summary."""
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts().items())) or "none"
        return (
            f"kept {self.num_checkpoints_kept}/{self.num_checkpoints_read} checkpoints of {self.num_models_kept} "
            f"models; dropped checkpoints: {counts}; dropped models: {len(self.dropped_models)}; skipped model "
            f"folders: {len(self.skipped_models)}"
        )


# -------------------------------------------------------------------------------------------------------------------
# Safe loading of weight files
# -------------------------------------------------------------------------------------------------------------------


def _check_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ZooFormatError(
            f"{path}: expected a state_dict (mapping of names to tensors), found {type(obj).__name__}."
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ZooFormatError(
                f"{path}: expected a state_dict mapping names to tensors, found entry {key!r} of type "
                f"{type(value).__name__}."
            )
    if not obj:
        raise ZooFormatError(f"{path}: expected a state_dict with tensors, found an empty mapping.")
    return dict(obj)


def load_safetensors_checkpoint(
    path: str | Path, checksum: Mapping[str, Any] | None = None, recorded_in: str = ""
) -> dict[str, torch.Tensor]:
    """Load a `.safetensors` state_dict on CPU; a corrupt or truncated file raises `ZooFormatError` naming it.

    With `checksum` (`{"size", "sha256"}`, read from the file `recorded_in`) the bytes are verified before they are
    parsed, so a changed file is an error rather than silently different weights.
    """

    path = Path(path)
    if not path.is_file():
        raise ZooFormatError(f"{path}: checkpoint file not found.")
    data = None
    if checksum is not None:
        data = path.read_bytes()
        verify_file_checksum(path, dict(checksum), recorded_in, data=data)
    try:
        state_dict = load_file(path, device="cpu") if data is None else load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise ZooFormatError(
            f"{path}: corrupt or truncated safetensors checkpoint; expected a complete safetensors file ({err})."
        ) from None
    return _check_state_dict(state_dict, path)


def load_pickle_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a `torch.save`d state_dict with `torch.load(map_location="cpu", weights_only=True)`, and nothing else.

    `weights_only=True` only rebuilds tensors and plain containers, so a checkpoint cannot execute code while being
    read. A pickle it rejects (one that references Python code/classes, or garbage) raises `ZooFormatError`; this
    function never retries with `weights_only=False`.
    """

    path = Path(path)
    if not path.is_file():
        raise ZooFormatError(f"{path}: checkpoint file not found.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ZooFormatError(
            f"{path}: refused to load: torch.load(weights_only=True) rejected the pickle "
            f"({weights_only_rejection(err)}); it references "
            "Python objects beyond tensors and containers (possibly code) or is corrupt. sane_hf never unpickles "
            "with weights_only=False: re-save it as a plain state_dict or as safetensors from a trusted environment."
        ) from None
    except (RuntimeError, EOFError, IndexError, OSError, ValueError) as err:
        raise ZooFormatError(
            f"{path}: corrupt or truncated checkpoint; expected a complete torch.save'd state_dict "
            f"({type(err).__name__}: {err})."
        ) from None
    return _check_state_dict(state_dict, path)


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, missing=ZooFormatError, invalid=ZooFormatError)


def _read_json_lines(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ZooFormatError(f"{path}: missing; expected {what}.")
    lines = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ZooFormatError(f"{path}: line {number} is not valid JSON ({err}); expected {what}.") from None
            if not isinstance(value, dict):
                raise ZooFormatError(f"{path}: line {number} is a {type(value).__name__}; expected a JSON object.")
            lines.append(value)
    if not lines:
        raise ZooFormatError(f"{path}: empty; expected {what}.")
    return lines


_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def natural_key_order(keys: Iterable[str]) -> list[str]:
    """Keys sorted with numbers compared as numbers and, per module, `weight`, `bias`, then BatchNorm buffers.

    The fallback order for safetensors checkpoints of unknown architectures: it restores `nn.Sequential` order
    (`module_list.3` before `module_list.11`) but not, e.g., ResNet's (`conv1` before `bn1`).
    """

    def sort_key(key: str):
        *prefix, leaf = key.split(".")
        parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in prefix)
        return parts, _LEAF_ORDER.get(leaf, len(_LEAF_ORDER)), leaf

    return sorted(keys, key=sort_key)


def _scalar(value: Any) -> Any:
    """A property value as a JSON/parquet scalar (`None` to leave it out)."""
    value = json_safe(value, strict=False)  # NaN stays NaN: a missing value would be `None`
    if value is None or isinstance(value, bool | int | float | str):
        return value
    # Lists and dicts (e.g. hidden sizes) stay comparable as their JSON text.
    return json.dumps(value, sort_keys=True)


# -------------------------------------------------------------------------------------------------------------------
# Readers
# -------------------------------------------------------------------------------------------------------------------


class ZooReader:
    """Base class of zoo readers: sorted listing, lazy per-checkpoint loading, filtering and its report.

    Args:
        path (`str` or `Path`): the zoo.
        epochs (`Iterable[int]`, *optional*): epochs to read; a requested epoch a model lacks is reported as
            `missing_checkpoint`. Defaults to every epoch each model has.
        weight_threshold (`float`, *optional*, defaults to `DEFAULT_WEIGHT_THRESHOLD` = 1e6): drop checkpoints with
            any |w| above it (the original used 100 for CNN zoos, 15,000-25,000 for ResNets; `math.inf` turns the
            check off; docs/zoo_dataset_format.md#filtering).

    Example:

    ```python
    >>> reader = open_zoo("runs/zoo")                              # format detected from the folder
    >>> [m.model_id for m in reader.members][:2]
    ['model_0000', 'model_0001']
    >>> for record in reader.iter_checkpoints():                   # one checkpoint in memory at a time
    ...     record.model_id, record.epoch, record.properties["test_acc"]
    >>> reader.report.summary()
    ```
    """

    format_name: ClassVar[str] = ""
    # The per-model metrics file (named in error messages).
    _metrics_name: ClassVar[str | None] = None

    def __init__(
        self,
        path: str | Path,
        *,
        epochs: Iterable[int] | None = None,
        weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD,
    ) -> None:
        self.path = Path(path)
        self.epochs = None if epochs is None else sorted({int(e) for e in epochs})
        if not (isinstance(weight_threshold, int | float) and weight_threshold > 0):
            raise ValueError(f"`weight_threshold` must be a positive number (or inf), got {weight_threshold!r}.")
        self.weight_threshold = float(weight_threshold)
        self.report = FilterReport(weight_threshold=self.weight_threshold)
        self._members: list[ZooMember] | None = None
        self._by_id: dict[str, ZooMember] = {}
        self._reference: tuple[list[tuple[str, tuple[int, ...], torch.dtype]], str] | None = None
        self._key_orders: dict[str, list[str] | None] = {}
        self._warned_natural_order = False

    def reset_report(self) -> None:
        """Start a fresh `report` (the models skipped while listing stay in it)."""
        skipped = list(self.report.skipped_models)
        self.report = FilterReport(weight_threshold=self.weight_threshold, skipped_models=skipped)

    # ------------------------------------------------------------------------------------------------- listing
    def _list_members(self) -> list[ZooMember]:
        raise NotImplementedError

    @property
    def members(self) -> list[ZooMember]:
        """The readable models, sorted by `model_id` (listed once; loads no weights)."""
        if self._members is None:
            members = sorted(self._list_members(), key=lambda m: m.model_id)
            duplicates = sorted(i for i, n in Counter(m.model_id for m in members).items() if n > 1)
            if duplicates:
                raise ZooFormatError(f"{self.path}: model ids must be unique, found duplicates {duplicates[:5]}.")
            if not members:
                skipped = self.report.skipped_models
                hint = f" ({len(skipped)} skipped, e.g. {skipped[0]})" if skipped else ""
                raise ZooFormatError(f"{self.path}: no finished models found in the {self.format_name} zoo{hint}.")
            self._members = members
            self._by_id = {m.model_id: m for m in members}
            logger.info("Listed %d models in %s (%s format).", len(members), self.path, self.format_name)
            skipped = self.report.skipped_models
            if skipped:
                logger.warning(
                    "Skipped %d model folder(s) of %s: %s%s.",
                    len(skipped),
                    self.path,
                    ", ".join(f"{s['model_id']} ({s['reason']})" for s in skipped[:3]),
                    ", ..." if len(skipped) > 3 else "",
                )
        return self._members

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.members]

    def member(self, model_id: str) -> ZooMember:
        """The listed model `model_id`."""
        self.members  # noqa: B018 (list on first use)
        if model_id not in self._by_id:
            raise KeyError(f"Model {model_id!r} is not in the zoo {self.path}.")
        return self._by_id[model_id]

    @property
    def architecture(self) -> str | None:
        """Registry name of the zoo's architecture (from the first model)."""
        return self.members[0].architecture

    @property
    def model_kwargs(self) -> dict[str, Any] | None:
        return self.members[0].model_kwargs

    def source_info(self) -> dict[str, Any]:
        """A JSON description of the source zoo, for `meta/info.json`."""
        return {"zoo_dir": str(self.path), "zoo_format": self.format_name}

    # ------------------------------------------------------------------------------------------------ contents
    def _read_properties(self, member: ZooMember) -> dict[int, dict[str, Any]]:
        raise NotImplementedError

    def _load(self, member: ZooMember, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def properties(self, member: ZooMember | str) -> dict[int, dict[str, Any]]:
        """Properties of the selected epochs of a model: epoch -> `{name: scalar}` (reads metadata files only)."""
        member = self.member(member) if isinstance(member, str) else member
        metrics = self._read_properties(member)
        result = {}
        for epoch in self.selected_epochs(member):
            values = metrics.get(epoch)
            if values is None:
                where = member.path / self._metrics_name if self._metrics_name else member.path
                raise ZooFormatError(f"{where}: no metrics for epoch {epoch}, which has a checkpoint.")
            props = {k: _scalar(v) for k, v in values.items()}
            # ggap = train_acc - test_acc, computed as in the original (docs/zoo_dataset_format.md) unless given.
            if props.get("ggap") is None and props.get("train_acc") is not None and props.get("test_acc") is not None:
                props["ggap"] = float(props["train_acc"]) - float(props["test_acc"])
            props.update({k: _scalar(v) for k, v in member.hyperparameters.items()})
            props["epoch"] = epoch
            result[epoch] = {k: v for k, v in props.items() if v is not None}
        return result

    def selected_epochs(self, member: ZooMember) -> list[int]:
        """The epochs that will be read for `member` (requested and available)."""
        if self.epochs is None:
            return member.epochs
        return [e for e in self.epochs if e in member.checkpoints]

    def load_state_dict(self, member: ZooMember | str, epoch: int) -> dict[str, torch.Tensor]:
        """Load one checkpoint (no filtering) in canonical key order, checking that it matches the zoo's architecture."""
        member = self.member(member) if isinstance(member, str) else member
        if epoch not in member.checkpoints:
            raise ZooFormatError(f"{member.path}: no checkpoint for epoch {epoch}; available: {member.epochs}.")
        state_dict = self._in_canonical_order(self._load(member, epoch), member)
        self._check_signature(state_dict, str(member.checkpoints[epoch]))
        return state_dict

    def _keeps_key_order(self, member: ZooMember) -> bool:
        """Whether `_load` returns the stored key order (pickles do; safetensors files sort keys by name)."""
        return False

    def _architecture_keys(self, member: ZooMember) -> list[str] | None:
        """`state_dict()` keys of the member's architecture, built once per configuration on the meta device."""
        if member.architecture is None or member.model_kwargs is None:
            return None
        cache_key = json.dumps([member.architecture, member.model_kwargs], sort_keys=True, default=str)
        if cache_key not in self._key_orders:

            try:
                with torch.device("meta"):
                    module = build_zoo_model(member.architecture, **member.model_kwargs)
                self._key_orders[cache_key] = list(module.state_dict())
            except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
                logger.debug("Cannot build %s to find its key order (%s).", member.architecture, err)
                self._key_orders[cache_key] = None
        return self._key_orders[cache_key]

    def _in_canonical_order(self, state_dict: dict[str, torch.Tensor], member: ZooMember) -> dict[str, torch.Tensor]:
        order = self._architecture_keys(member)
        if order is not None and len(order) == len(state_dict) and set(order) == set(state_dict):
            return {key: state_dict[key] for key in order}
        if self._keeps_key_order(member):
            return state_dict
        if not self._warned_natural_order:
            self._warned_natural_order = True
            logger.warning(
                "%s: the key order of %s is unknown (architecture %r); using a natural sort of the keys, which may "
                "differ from the model's state_dict order.",
                self.path,
                member.model_id,
                member.architecture,
            )
        return {key: state_dict[key] for key in natural_key_order(state_dict)}

    def _check_signature(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        # Same architecture = same ordered shapes and dtypes; names may differ (module docstring).
        signature = [(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]
        if self._reference is None:
            self._reference = (signature, source)
            return
        reference, reference_source = self._reference
        if [s[1:] for s in signature] == [s[1:] for s in reference]:
            return
        if len(signature) != len(reference):
            names, reference_names = [s[0] for s in signature], [s[0] for s in reference]
            missing = [k for k in reference_names if k not in names]
            unexpected = [k for k in names if k not in reference_names]
            detail = f"{len(signature)} tensors instead of {len(reference)}"
            detail += f", missing key(s) {missing[:3]}" if missing else ""
            detail += f", unexpected key(s) {unexpected[:3]}" if unexpected else ""
        else:
            index = next(i for i, (a, b) in enumerate(zip(signature, reference)) if a[1:] != b[1:])
            (key, shape, dtype), (ref_key, ref_shape, ref_dtype) = signature[index], reference[index]
            detail = (
                f"key {key!r} has shape {list(shape)} {str(dtype).removeprefix('torch.')}, expected "
                f"{list(ref_shape)} {str(ref_dtype).removeprefix('torch.')}"
                + (f" (reference key {ref_key!r})" if ref_key != key else "")
            )
        raise ZooFormatError(
            f"{source}: checkpoint of another architecture: {detail} (reference: {reference_source}). A zoo must hold "
            "one architecture; remove this model from the zoo or convert it separately."
        )

    def _filter_reason(self, state_dict: Mapping[str, torch.Tensor]) -> str | None:
        """Why a checkpoint is dropped (docs/zoo_dataset_format.md), or None to keep it."""
        tensors = [v.detach() for v in state_dict.values() if v.is_floating_point() and v.numel()]
        if not tensors:
            return None
        # Min and max of every tensor: NaN propagates into both, so they answer both questions (max |w| is the
        # larger |extreme|). aminmax is vectorized and faster than the inf-norm (`_foreach_norm(ord=inf)`) it
        # replaced (BENCHMARKS.md, "ResNet-18 at full size", benchmarks/bench_scale.py).
        extremes = torch.stack([torch.stack(torch.aminmax(t)) for t in tensors])
        if not bool(torch.isfinite(extremes).all()):
            # The original drops NaN only; Inf cannot be tokenized or normalized either, so it goes too.
            return DROP_NON_FINITE
        if bool((extremes.abs() > self.weight_threshold).any()):
            return DROP_ABOVE_THRESHOLD
        return None

    def read_member(self, member: ZooMember | str, *, record: bool = True) -> Iterator[CheckpointRecord]:
        """Yield the kept checkpoints of one model, in epoch order, one at a time.

        Args:
            member (`ZooMember` or `str`): the model (or its id).
            record (`bool`, *optional*, defaults to `True`): count reads and drops in `self.report` (pass `False`
                for a second pass over the same models).
        """
        member = self.member(member) if isinstance(member, str) else member
        report = self.report if record else None
        properties = self.properties(member)
        if report is not None and self.epochs is not None:
            for epoch in self.epochs:
                if epoch not in member.checkpoints:
                    report.dropped_checkpoints.append(
                        {"model_id": member.model_id, "epoch": epoch, "reason": DROP_MISSING}
                    )
        kept = 0
        for epoch in self.selected_epochs(member):
            state_dict = self.load_state_dict(member, epoch)
            reason = self._filter_reason(state_dict)
            if report is not None:
                report.num_checkpoints_read += 1
            if reason is not None:
                if report is not None:
                    report.dropped_checkpoints.append({"model_id": member.model_id, "epoch": epoch, "reason": reason})
                logger.debug("Dropped %s epoch %d: %s.", member.model_id, epoch, reason)
                continue
            kept += 1
            if report is not None:
                report.num_checkpoints_kept += 1
            yield CheckpointRecord(
                model_id=member.model_id,
                epoch=epoch,
                state_dict=state_dict,
                properties=properties[epoch],
                architecture=member.architecture,
                model_kwargs=member.model_kwargs,
                source=str(member.checkpoints[epoch]),
            )
        if report is not None:
            if kept:
                report.num_models_kept += 1
            else:
                report.dropped_models.append({"model_id": member.model_id, "reason": DROP_NO_CHECKPOINT_LEFT})
                logger.info("Dropped model %s: no checkpoint survived filtering.", member.model_id)

    def iter_checkpoints(
        self, model_ids: Iterable[str] | None = None, *, record: bool = True
    ) -> Iterator[CheckpointRecord]:
        """Yield the kept checkpoints of `model_ids` (default: all models, sorted), model by model."""
        for model_id in self.model_ids if model_ids is None else model_ids:
            yield from self.read_member(model_id, record=record)

    def __iter__(self) -> Iterator[CheckpointRecord]:
        return self.iter_checkpoints()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, epochs={self.epochs}, threshold={self.weight_threshold})"
        )


def _require_zoo_dir(path: Path, expected: str) -> None:
    if not path.exists():
        raise ZooFormatError(f"{path}: zoo folder not found; expected {expected}.")
    if not path.is_dir():
        raise ZooFormatError(f"{path}: expected a zoo folder ({expected}), found a file.")
    if not any(path.iterdir()):
        raise ZooFormatError(f"{path}: zoo folder is empty; expected {expected}.")


class SaneHfZooReader(ZooReader):
    """Reader of the zoos `sane_hf` builds.

    ```
    <zoo_dir>/zoo_config.json               {"format": "sane_hf-zoo", "format_version": 1, "task": {...}, ...}
    <zoo_dir>/models/<model_id>/params.json {"model_id", "architecture", "model_kwargs", "seed", "lr", ...}
                               /metrics.jsonl  one line per epoch 0..E: {"epoch", "train_acc", "test_acc", ...}
                               /checkpoints/epoch_<E:04d>.safetensors
                               /DONE        written last: a folder without it is unfinished and skipped (reported)
    ```

    Properties are the metrics of the epoch's line (and `ggap`), plus the scalar hyper-parameters of `params.json`
    (`epochs` is renamed `num_epochs`).
    """

    format_name = "sane_hf"
    _metrics_name = METRICS_NAME

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        expected = f"a sane_hf zoo ({ZOO_CONFIG_NAME} and models/<model_id>/ folders)"
        _require_zoo_dir(self.path, expected)
        config = _read_json(self.path / ZOO_CONFIG_NAME, f"the zoo's config ({ZOO_CONFIG_NAME})")
        if not isinstance(config, dict) or config.get("format") != ZOO_FORMAT:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise ZooFormatError(f'{self.path / ZOO_CONFIG_NAME}: expected "format": {ZOO_FORMAT!r}, found {found!r}.')
        if config.get("format_version") != ZOO_FORMAT_VERSION:
            raise ZooFormatError(
                f"{self.path / ZOO_CONFIG_NAME}: expected format_version {ZOO_FORMAT_VERSION}, found "
                f"{config.get('format_version')!r}."
            )
        self.zoo_config = config
        self._checksums: dict[str, dict[str, Any]] = {}  # model id -> checkpoint name -> size, sha256 (its DONE)
        if not (self.path / MODELS_DIR).is_dir():
            raise ZooFormatError(f"{self.path / MODELS_DIR}: missing; expected one folder per model.")

    def source_info(self) -> dict[str, Any]:
        return {**super().source_info(), "task": self.zoo_config.get("task")}

    def _list_members(self) -> list[ZooMember]:
        members = []
        for folder in sorted(p for p in (self.path / MODELS_DIR).iterdir() if p.is_dir()):
            try:
                done = read_done(folder)
            except ValueError as err:
                raise ZooFormatError(str(err)) from None
            if done is None:
                self.report.skipped_models.append({"model_id": folder.name, "reason": "unfinished (no DONE file)"})
                logger.debug("Skipping unfinished model %s (no DONE file).", folder)
                continue
            params = _read_json(folder / PARAMS_NAME, f"the model's {PARAMS_NAME}")
            if not isinstance(params, dict):
                raise ZooFormatError(f"{folder / PARAMS_NAME}: expected a JSON object, found {type(params).__name__}.")
            for key in ("architecture", "model_kwargs"):
                if key not in params:
                    raise ZooFormatError(f"{folder / PARAMS_NAME}: missing key {key!r}.")
            checkpoints = {}
            checkpoint_dir = folder / CHECKPOINTS_DIR
            if checkpoint_dir.is_dir():
                for file in checkpoint_dir.iterdir():
                    match = CHECKPOINT_FILE.match(file.name)
                    if match:
                        checkpoints[int(match.group(1))] = file
            if not checkpoints:
                raise ZooFormatError(
                    f"{checkpoint_dir}: expected epoch_<E:04d>.safetensors checkpoints in a finished model, found none."
                )
            self._checksums[folder.name] = _finished_checkpoints(folder, done, checkpoints)
            hyperparameters = {
                _SANE_HF_RENAMES.get(k, k): v
                for k, v in params.items()
                if k not in _SANE_HF_NON_PROPERTIES and v is not None
            }
            members.append(
                ZooMember(
                    model_id=folder.name,
                    path=folder,
                    checkpoints=checkpoints,
                    architecture=params["architecture"],
                    model_kwargs=params["model_kwargs"],
                    hyperparameters=hyperparameters,
                )
            )
        return members

    def _read_properties(self, member: ZooMember) -> dict[int, dict[str, Any]]:
        file = member.path / self._metrics_name
        lines = _read_json_lines(file, "one JSON line per epoch with 'epoch' and the metrics")
        metrics = {}
        for number, line in enumerate(lines, start=1):
            epoch = line.get("epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise ZooFormatError(f"{file}: line {number} has no integer 'epoch' (found {epoch!r}).")
            metrics[epoch] = {k: v for k, v in line.items() if k != "epoch"}
        return metrics

    def _load(self, member: ZooMember, epoch: int) -> dict[str, torch.Tensor]:
        path = member.checkpoints[epoch]
        recorded = self._checksums.get(member.model_id, {}).get(path.name)
        return load_safetensors_checkpoint(path, recorded, str(member.path / DONE_NAME))


def _finished_checkpoints(folder: Path, done: dict[str, Any], found: Mapping[int, Path]) -> dict[str, Any]:
    """The checkpoint checksums a model's `DONE` records (empty for zoos written before they were recorded), after
    checking that every checkpoint `DONE` accounts for (its `checkpoints`, else epochs 0..`epochs`) is on disk."""
    checksums = done.get(DONE_CHECKSUMS_KEY)
    if isinstance(checksums, dict):
        expected = sorted(checksums)
    elif isinstance(done.get("epochs"), int):
        expected, checksums = [checkpoint_name(epoch) for epoch in range(done["epochs"] + 1)], {}
    else:
        expected, checksums = [], {}
    names = {path.name for path in found.values()}
    missing = [name for name in expected if name not in names]
    if missing:
        raise ZooFormatError(
            f"{folder / CHECKPOINTS_DIR / missing[0]}: missing, but {folder / DONE_NAME} marks the model finished "
            f"with {len(expected)} checkpoints ({len(missing)} missing); expected all of them. Delete the model "
            "folder and rerun sane-make-zoo to train it again."
        )
    return checksums


class ModelZooReader(ZooReader):
    """Reader of the original model zoos (modelzoos.cc; ray-tune trial folders, docs/zoo_dataset_format.md).

    ```
    <zoo_root>/<trial_dir>/params.json                 flat "a::b" config
                          /result.json                 JSON lines, one per reported iteration (line 0 = init)
                          /checkpoint_<E>/checkpoints  or checkpoint_<E:06d>/checkpoints: torch.save(state_dict)
    ```

    * Checkpoints are read with `torch.load(weights_only=True)` only.
    * The architecture comes from `zoo_params_to_kwargs(params)`; an unknown `model::type` leaves it `None` (the
      weights are still read and tokenized).
    * Properties of epoch `E` come from the `result.json` line whose `training_iteration` is `E`. This is the
      original's offset logic (docs/zoo_dataset_format.md: line `E - offset`, offset 0 if line 0 is the initialization, else
      1), decided per model instead of on the first model only; lines without `training_iteration` are indexed
      by epoch. `ggap = train_acc - test_acc`.
    * Trial folders without any checkpoint (e.g. crashed before the first save) are skipped and reported.
    """

    format_name = "modelzoo"
    _metrics_name = "result.json"

    def _keeps_key_order(self, member: ZooMember) -> bool:
        return True  # torch.save keeps the state_dict order

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        _require_zoo_dir(self.path, "ray-tune trial folders with params.json, result.json and checkpoint_<E>/")

    def _list_members(self) -> list[ZooMember]:

        members = []
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            if not (folder / "params.json").is_file() and not (folder / "result.json").is_file():
                self.report.skipped_models.append({"model_id": folder.name, "reason": "not a trial folder"})
                logger.debug("Skipping %s: no params.json or result.json (not a trial folder).", folder)
                continue
            params = _read_json(folder / "params.json", "the trial's params.json")
            if not isinstance(params, dict):
                raise ZooFormatError(
                    f"{folder / 'params.json'}: expected a JSON object, found {type(params).__name__}."
                )
            if not (folder / "result.json").is_file():
                raise ZooFormatError(f"{folder / 'result.json'}: missing; expected the trial's JSON-lines results.")
            checkpoints: dict[int, Path] = {}
            for sub in folder.iterdir():
                match = _MODELZOO_CHECKPOINT_DIR.match(sub.name)
                if match and (sub / _MODELZOO_CHECKPOINT_FILE).is_file():
                    epoch = int(match.group(1))
                    # The unpadded name wins, as the original tries `checkpoint_<E>` first.
                    if epoch not in checkpoints or sub.name == f"checkpoint_{epoch}":
                        checkpoints[epoch] = sub / _MODELZOO_CHECKPOINT_FILE
            if not checkpoints:
                self.report.skipped_models.append({"model_id": folder.name, "reason": "no checkpoint_<E>/checkpoints"})
                logger.debug("Skipping %s: no checkpoint_<E>/checkpoints files.", folder)
                continue
            try:
                architecture, model_kwargs = zoo_params_to_kwargs(params)
            except ValueError as err:
                architecture, model_kwargs = None, None
                logger.debug("%s: architecture unknown to sane_hf (%s).", folder, err)
            hyperparameters = {
                name: params[key]
                for key, name in _MODELZOO_HYPERPARAMETERS.items()
                if key in params and params[key] is not None
            }
            members.append(
                ZooMember(
                    model_id=folder.name,
                    path=folder,
                    checkpoints=checkpoints,
                    architecture=architecture,
                    model_kwargs=model_kwargs,
                    hyperparameters=hyperparameters,
                )
            )
        if members and members[0].architecture is None:
            logger.warning(
                "%s: `model::type` %r is not a sane_hf zoo architecture; the dataset will not name one.",
                self.path,
                _read_json(members[0].path / "params.json", "params.json").get("model::type"),
            )
        return members

    def _read_properties(self, member: ZooMember) -> dict[int, dict[str, Any]]:
        file = member.path / self._metrics_name
        lines = _read_json_lines(file, "one JSON line of results per training iteration")
        metrics: dict[int, dict[str, Any]] = {}
        for index, line in enumerate(lines):
            values = {
                k: v
                for k, v in line.items()
                if k in _RESULT_KEYS or (k.endswith(_METRIC_SUFFIXES) and isinstance(v, int | float))
            }
            iteration = line.get("training_iteration")
            epoch = int(iteration) if isinstance(iteration, int | float) else index
            metrics[epoch] = values  # a restored trial repeats iterations: the last report wins
        return metrics

    def _load(self, member: ZooMember, epoch: int) -> dict[str, torch.Tensor]:
        return load_pickle_checkpoint(member.checkpoints[epoch])


class HubModelsReader(ZooReader):
    """Reader of independent models: Hub model repo ids and/or local folders.

    Each model folder holds `model.safetensors` (or a sharded `model.safetensors.index.json`), or
    `pytorch_model.bin` (read with `weights_only=True`), and optionally `config.json` (a `ZooModel` config with
    `"zoo_architecture"`, or a transformers config with `"model_type"`) and `properties.json` (a flat object of
    scalar properties, e.g. `{"test_acc": 0.91}`). Every model is one checkpoint, `epoch` 0.

    Args:
        sources (`str`, `Path` or a list of them): a folder whose sub-folders are model folders, one model folder,
            a list of model folders / Hub repo ids, or a comma-separated string of them. Repo ids are fetched with
            `huggingface_hub.snapshot_download` (weights, `*.json`); `revision` applies to all of them.
    """

    format_name = "models"

    def __init__(
        self, sources: str | Path | Sequence[str | Path], *, revision: str | None = None, **kwargs: Any
    ) -> None:
        if isinstance(sources, str) and "," in sources:
            sources = [s.strip() for s in sources.split(",") if s.strip()]
        if isinstance(sources, str | Path):
            path = Path(sources)
            if path.is_dir() and not _has_weights(path):
                _require_zoo_dir(path, "model folders with model.safetensors or pytorch_model.bin")
                sources = sorted(p for p in path.iterdir() if p.is_dir() and _has_weights(p))
                if not sources:
                    raise ZooFormatError(
                        f"{path}: no model folders found; expected sub-folders with one of {list(_WEIGHT_FILES)}."
                    )
            else:
                sources = [sources]
        super().__init__(Path(str(sources[0])).parent if len(sources) > 1 else Path(str(sources[0])), **kwargs)
        self.sources = [str(s) for s in sources]
        self.revision = revision

    def source_info(self) -> dict[str, Any]:
        return {"zoo_dir": self.sources if len(self.sources) > 1 else self.sources[0], "zoo_format": self.format_name}

    def _resolve(self, source: str) -> tuple[str, Path]:
        path = Path(source)
        if path.is_dir():
            return path.name, path
        if path.exists() or source.startswith((".", "/")) or source.count("/") > 1:
            raise ZooFormatError(f"{source}: expected a model folder or a Hub repo id, found no such folder.")

        folder = huggingface_hub.snapshot_download(
            source,
            revision=self.revision,
            allow_patterns=["*.safetensors", "*.bin", "*.json"],
        )
        return source, Path(folder)

    def _list_members(self) -> list[ZooMember]:
        members = []
        for source in self.sources:
            model_id, folder = self._resolve(source)
            if not _has_weights(folder):
                raise ZooFormatError(f"{folder}: no weights; expected one of {list(_WEIGHT_FILES)}.")
            architecture = model_kwargs = None
            if (folder / "config.json").is_file():
                config = _read_json(folder / "config.json", "the model's config.json")
                if isinstance(config, dict) and _ZOO_ARCHITECTURE_KEY in config:
                    architecture = config[_ZOO_ARCHITECTURE_KEY]
                    model_kwargs = {k: v for k, v in config.items() if k != _ZOO_ARCHITECTURE_KEY}
                elif isinstance(config, dict) and "model_type" in config:
                    architecture = config["model_type"]
            hyperparameters = {}
            if (folder / _MODEL_PROPERTIES_FILE).is_file():
                values = _read_json(folder / _MODEL_PROPERTIES_FILE, "a flat JSON object of scalar properties")
                if not isinstance(values, dict):
                    raise ZooFormatError(f"{folder / _MODEL_PROPERTIES_FILE}: expected a JSON object.")
                hyperparameters = values
            members.append(
                ZooMember(
                    model_id=model_id,
                    path=folder,
                    checkpoints={0: folder},
                    architecture=architecture,
                    model_kwargs=model_kwargs,
                    hyperparameters=hyperparameters,
                )
            )
        return members

    def _read_properties(self, member: ZooMember) -> dict[int, dict[str, Any]]:
        return {0: {}}

    def _keeps_key_order(self, member: ZooMember) -> bool:
        return not any((member.path / name).is_file() for name in (_SAFETENSORS_WEIGHTS, _SAFETENSORS_INDEX))

    def _load(self, member: ZooMember, epoch: int) -> dict[str, torch.Tensor]:
        folder = member.path
        if (folder / _SAFETENSORS_WEIGHTS).is_file():
            return load_safetensors_checkpoint(folder / _SAFETENSORS_WEIGHTS)
        for index_name, loader in ((_SAFETENSORS_INDEX, load_safetensors_checkpoint), (_PICKLE_INDEX, None)):
            if (folder / index_name).is_file():
                index = _read_json(folder / index_name, "a sharded-weights index with a 'weight_map'")
                weight_map = index.get("weight_map") if isinstance(index, dict) else None
                if not isinstance(weight_map, dict):
                    raise ZooFormatError(f"{folder / index_name}: expected a 'weight_map' object.")
                state_dict: dict[str, torch.Tensor] = {}
                for shard in sorted(set(weight_map.values())):
                    state_dict.update((loader or load_pickle_checkpoint)(folder / shard))
                return state_dict
        return load_pickle_checkpoint(folder / _PICKLE_WEIGHTS)


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _WEIGHT_FILES)


def detect_zoo_format(path: str | Path | Sequence[str]) -> str:
    """Guess the layout of a zoo: `"sane_hf"`, `"modelzoo"` or `"models"`.

    Raises:
        `ZooFormatError`: a missing or empty folder, or one that matches no known layout.
    """
    if not isinstance(path, str | Path):
        return "models"
    if isinstance(path, str) and "," in path:
        return "models"
    folder = Path(path)
    if not folder.exists():
        # Never guess that a missing folder is a Hub repo id: a typo in "runs/zoo" must not become a download.
        raise ZooFormatError(
            f"{folder}: zoo folder not found (for Hub model repo ids, pass zoo_format='models' explicitly)."
        )
    if not folder.is_dir():
        raise ZooFormatError(f"{folder}: expected a zoo folder, found a file.")
    if (folder / ZOO_CONFIG_NAME).is_file():
        return "sane_hf"
    if _has_weights(folder):
        return "models"
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subfolders and not any(folder.iterdir()):
        raise ZooFormatError(f"{folder}: zoo folder is empty.")
    for sub in subfolders:
        if (sub / "params.json").is_file() or (sub / "result.json").is_file():
            return "modelzoo"
        if _has_weights(sub):
            return "models"
    raise ZooFormatError(
        f"{folder}: unknown zoo layout; expected {ZOO_CONFIG_NAME} (a sane_hf zoo), trial folders with "
        f"params.json/result.json (an original model zoo), or model folders with one of {list(_WEIGHT_FILES)}."
    )


_READERS: dict[str, type[ZooReader]] = {
    "sane_hf": SaneHfZooReader,
    "modelzoo": ModelZooReader,
    "models": HubModelsReader,
}


def open_zoo(
    path: str | Path | Sequence[str],
    zoo_format: str = "auto",
    *,
    epochs: Iterable[int] | None = None,
    weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD,
    **kwargs: Any,
) -> ZooReader:
    """Open a zoo with the reader for its layout.

    Args:
        path (`str`, `Path` or a list of str): the zoo folder (or, for `"models"`, folders / Hub repo ids).
        zoo_format (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"sane_hf"`, `"modelzoo"` or `"models"`.
        epochs (`Iterable[int]`, *optional*): epochs to read (default: all).
        weight_threshold (`float`, *optional*, defaults to `DEFAULT_WEIGHT_THRESHOLD`): see `ZooReader`.
        kwargs: passed to the reader (e.g. `revision` for `"models"`).
    """
    if zoo_format == "auto":
        zoo_format = detect_zoo_format(path)
    if zoo_format not in _READERS:
        raise ValueError(f"`zoo_format` must be 'auto' or one of {ZOO_FORMATS}, got {zoo_format!r}.")
    return _READERS[zoo_format](path, epochs=epochs, weight_threshold=weight_threshold, **kwargs)
