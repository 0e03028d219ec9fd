"""`meta/info.json` of a tokenized zoo: a typed, validated description of the dataset.

Like lerobot's `DatasetInfo`, the whole structure of a dataset is described by this one small
JSON file, which can be read on the Hub before any data is downloaded: format version, architecture, token layout
sizes, splits (model ids, counts, files), property schema, normalization mode, source zoo and filtering report.
Readers refuse other format versions with a typed error and tolerate unknown keys (forward compatibility).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..constants import OLD_SPLIT_NAMES, SPLIT_NAMES


logger = logging.getLogger(__name__)

# The on-disk format of a tokenized zoo (parquet columns + meta/*.json + card). Bump on any change old readers
# cannot read; `load_zoo_dataset` refuses other versions with `ZooDatasetVersionError`.
ZOO_DATASET_FORMAT = "sane_hf-zoo-dataset"
# Version 2 names the validation split `validation` (datasets' name; version 1: `val`), nothing else changed, so
# version 1 datasets still load, their `val` split as `validation` (docs/zoo_dataset_format.md#format-versions).
ZOO_DATASET_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
# Hub tag written on push, so readers can pin `revision=ZOO_DATASET_TAG` (lerobot tags `CODEBASE_VERSION`).
ZOO_DATASET_TAG = f"sane-zoo-v{ZOO_DATASET_FORMAT_VERSION}"

DATA_DIR = "data"
META_DIR = "meta"
INFO_PATH = f"{META_DIR}/info.json"
LAYOUT_PATH = f"{META_DIR}/layout.json"
NORMALIZATION_PATH = f"{META_DIR}/normalization.json"
DATA_PATH_TEMPLATE = DATA_DIR + "/{split}-{shard_index:05d}-of-{num_shards:05d}.parquet"
# Property types as `datasets.Value` dtypes.
PROPERTY_DTYPES = ("float64", "int64", "bool", "string")


class ZooDatasetVersionError(ValueError):
    """A tokenized zoo was written in a format version this `sane_hf` cannot read."""


@dataclass
class SplitInfo:
    """One split of a tokenized zoo.

    Args:
        model_ids (`list[str]`): the models of the split, sorted (splits are by model, docs/zoo_dataset_format.md).
        num_checkpoints (`int`): rows (checkpoints) written.
        files (`list[str]`): the parquet shards, relative to the dataset root.
        num_bytes (`int`, *optional*, defaults to 0): size of the shards on disk.
    """

    model_ids: list[str]
    num_checkpoints: int
    files: list[str] = field(default_factory=list)
    num_bytes: int = 0

    @property
    def num_models(self) -> int:
        return len(self.model_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"num_models": self.num_models, **asdict(self)}


@dataclass
class SaneDatasetInfo:
    """Contents of `meta/info.json`.

    Args:
        token_size (`int`): token width `T`.
        num_tokens (`int`): tokens per checkpoint `S`.
        num_layers (`int`): tokenized layers.
        splits (`dict[str, SplitInfo]`): `train`/`validation`/`test` (a split may hold zero models; a version 1
            file's `val` is read as `validation`, its `files` unchanged).
        properties (`dict[str, str]`): property column name -> `datasets.Value` dtype (`float64`, `int64`, `bool`,
            `string`).
        architecture (`str`, *optional*): zoo registry name (`sane_hf.zoo_models`), if known.
        model_kwargs (`dict`, *optional*): `build_zoo_model(architecture, **model_kwargs)` rebuilds a zoo member
            (the reference checkpoint's; hyper-parameter arguments such as `activation` vary between members and
            are properties).
        reference (`dict`, *optional*): the reference checkpoint (`model_id`, `epoch`, `source`): the first kept
            train checkpoint, which defines the layout and its non-tokenized values (docs/zoo_dataset_format.md).
        max_positions (`list[int]`, *optional*): exclusive bound of each position coordinate.
        tokens_normalized (`bool`, *optional*, defaults to `True`): tokens are standardized with
            `meta/normalization.json` (fitted on the train split only).
        normalization_mode (`str`, *optional*, defaults to `"standardize"`).
        tokenize_bn_stats (`bool`, *optional*, defaults to `True`), ignore_bn (`bool`, *optional*, defaults to
            `False`): the tokenization options.
        canonicalized (`bool`, *optional*, defaults to `False`): every model was mapped onto the reference model
            (its `canonical_epoch`) with weight matching before normalization (docs/method.md#canonicalization).
        epochs (`list[int]`, *optional*): the epochs that were requested (`None`: all available).
        split_fractions (`list[float]`), split_seed (`int`), max_models (`int`, *optional*): how splits were drawn.
        weight_threshold (`float`): checkpoints with any |w| above it were dropped (docs/zoo_dataset_format.md).
        source (`dict`): the source zoo (`zoo_dir`, `zoo_format`, `task`, ...).
        filtering (`dict`): the filtering report (`FilterReport.to_dict()`).
        features (`dict`): the `datasets.Features` of the parquet files (`Features.to_dict()`).
        checksums (`dict`, *optional*): shard path -> `{"split", "size", "sha256"}` of every parquet shard, which
            `load_zoo_dataset` verifies before reading a local folder (`None`: a dataset written before checksums
            existed, loaded unverified).
        data_path (`str`): template of the shard paths.
        format (`str`), format_version (`int`), codebase_version (`str`): what wrote the dataset.
    """

    token_size: int
    num_tokens: int
    num_layers: int
    splits: dict[str, SplitInfo]
    properties: dict[str, str]
    architecture: str | None = None
    model_kwargs: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    max_positions: list[int] | None = None
    tokens_normalized: bool = True
    canonicalized: bool = False
    normalization_mode: str = "standardize"
    tokenize_bn_stats: bool = True
    ignore_bn: bool = False
    epochs: list[int] | None = None
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    split_seed: int = 42
    max_models: int | None = None
    weight_threshold: float = math.inf
    source: dict[str, Any] = field(default_factory=dict)
    filtering: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, dict[str, Any]] | None = None
    data_path: str = DATA_PATH_TEMPLATE
    format: str = ZOO_DATASET_FORMAT
    format_version: int = ZOO_DATASET_FORMAT_VERSION
    codebase_version: str = ""

    def __post_init__(self):
        for name in ("token_size", "num_tokens", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SaneDatasetInfo: `{name}` must be a positive int, got {value!r}.")
        if self.format != ZOO_DATASET_FORMAT:
            raise ValueError(f"SaneDatasetInfo: `format` must be {ZOO_DATASET_FORMAT!r}, got {self.format!r}.")
        self.splits = {
            name: split if isinstance(split, SplitInfo) else _split_from_dict(name, split)
            for name, split in self.splits.items()
        }
        unknown = sorted(set(self.splits) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"SaneDatasetInfo: unknown split(s) {unknown}; expected a subset of {SPLIT_NAMES}.")
        seen: dict[str, str] = {}
        for name, split in self.splits.items():
            for model_id in split.model_ids:
                if model_id in seen:
                    raise ValueError(
                        f"SaneDatasetInfo: model {model_id!r} is in both the {seen[model_id]!r} and the {name!r} "
                        "split; splits must be disjoint by model."
                    )
                seen[model_id] = name
        for name, dtype in self.properties.items():
            if dtype not in PROPERTY_DTYPES:
                raise ValueError(
                    f"SaneDatasetInfo: property {name!r} has dtype {dtype!r}; expected one of {PROPERTY_DTYPES}."
                )
        if self.max_positions is not None and (
            not isinstance(self.max_positions, list) or len(self.max_positions) != 3
        ):
            raise ValueError(f"SaneDatasetInfo: `max_positions` must have 3 entries, got {self.max_positions!r}.")

    @property
    def num_models(self) -> int:
        return sum(split.num_models for split in self.splits.values())

    @property
    def num_checkpoints(self) -> int:
        return sum(split.num_checkpoints for split in self.splits.values())

    @property
    def nonempty_splits(self) -> list[str]:
        """Splits with at least one checkpoint, in `train`, `validation`, `test` order (the card's `configs` lists
        these)."""
        return [name for name in SPLIT_NAMES if name in self.splits and self.splits[name].num_checkpoints > 0]

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["splits"] = {name: split.to_dict() for name, split in self.splits.items()}
        # JSON has no infinity; `null` means "no threshold" (the original's default, float("inf")).
        data["weight_threshold"] = None if math.isinf(self.weight_threshold) else self.weight_threshold
        # Version fields first, as in lerobot's info.json, so a human sees them at the top of the file.
        order = ["format", "format_version", "codebase_version"]
        return {**{k: data[k] for k in order}, **{k: v for k, v in data.items() if k not in order}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "info.json") -> SaneDatasetInfo:
        """Read `to_dict` output.

        Raises:
            `ZooDatasetVersionError`: the file was written in another format version.
            `ValueError`: a field is missing or invalid (the message names it and `source`).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, found {type(data).__name__}.")
        if data.get("format") != ZOO_DATASET_FORMAT:
            raise ValueError(
                f"{source}: `format` is {data.get('format')!r}; expected {ZOO_DATASET_FORMAT!r} "
                "(is this a tokenized zoo written by sane_hf?)."
            )
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ZooDatasetVersionError(
                f"{source}: the tokenized zoo has format_version {version!r}, but this sane_hf reads format_version "
                f"{' or '.join(map(str, READABLE_FORMAT_VERSIONS))}. Convert the source zoo again with "
                f"`sane-convert-zoo` (or use the sane_hf version that wrote it, codebase_version "
                f"{data.get('codebase_version')!r})."
            )
        if version == 1:
            data = _renamed_splits(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            # Forward compatibility (lerobot `DatasetInfo.from_dict`): newer minor writers may add fields.
            logger.warning("%s: ignoring unknown field(s) %s (written by a newer sane_hf?).", source, unknown)
        values = {k: v for k, v in data.items() if k in known}
        if values.get("weight_threshold", 0) is None:
            values["weight_threshold"] = math.inf
        missing = sorted(f.name for f in fields(cls) if f.name not in values and _required(f))
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}.")
        try:
            return cls(**values)
        except (TypeError, KeyError) as err:
            raise ValueError(f"{source}: invalid content ({err}).") from None


def _renamed_splits(data: Mapping[str, Any]) -> dict[str, Any]:
    """A format version 1 `info.json` with its `val` split (and the split its shard checksums name) as `validation`;
    the shard files keep their names."""
    data = dict(data)
    if isinstance(data.get("splits"), Mapping):
        data["splits"] = {OLD_SPLIT_NAMES.get(name, name): split for name, split in data["splits"].items()}
    if isinstance(data.get("checksums"), Mapping):
        data["checksums"] = {
            file: {**record, "split": OLD_SPLIT_NAMES.get(record.get("split"), record.get("split"))}
            if isinstance(record, Mapping)
            else record
            for file, record in data["checksums"].items()
        }
    return data


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _split_from_dict(name: str, data: Any) -> SplitInfo:
    if not isinstance(data, Mapping):
        raise ValueError(f"SaneDatasetInfo: split {name!r} must be an object, got {type(data).__name__}.")
    try:
        split = SplitInfo(
            model_ids=[str(m) for m in data["model_ids"]],
            num_checkpoints=int(data["num_checkpoints"]),
            files=[str(f) for f in data.get("files", [])],
            num_bytes=int(data.get("num_bytes", 0)),
        )
    except KeyError as err:
        raise ValueError(f"SaneDatasetInfo: split {name!r} lacks the field {err.args[0]!r}.") from None
    if "num_models" in data and data["num_models"] != split.num_models:
        raise ValueError(
            f"SaneDatasetInfo: split {name!r} says num_models={data['num_models']} but lists "
            f"{split.num_models} model ids."
        )
    return split
