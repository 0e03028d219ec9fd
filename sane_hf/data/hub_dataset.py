"""A model zoo as a Hub dataset: convert (zoo -> parquet + meta + card), push, and load.

The dataset folder is laid out like the Hub repo it becomes (lerobot's layout):

```
data/<split>-<shard:05d>-of-<n:05d>.parquet   one row per checkpoint: model_id, epoch, tokens [S, T], properties
meta/info.json                               SaneDatasetInfo: format version, architecture, splits, schema, ...
meta/layout.json                             TokenLayout.to_dict()
meta/normalization.json                      TokenNormalization.to_dict(), fitted on the train split only
README.md                                    dataset card; its `configs` let `datasets.load_dataset` read the parquet
```

Conversion (`convert_zoo` / `write_zoo_dataset`) streams: checkpoints are read one model at a time, tokenized in
small batches and written into parquet shards of bounded size, holding at most two shards in memory (one being
filled, one being encoded and written by a background thread). Differences from the original preprocessing
(docs/zoo_dataset_format.md, docs/method.md#normalization), on purpose:

* the model list is sorted before the seeded shuffle (the original shuffled the unsorted `iterdir()` order);
* normalization statistics come from the train split only and are applied to every split (the original fitted
  each split on itself);
* tokens are stored once per checkpoint; windows and permutations are drawn at training time (the original
  stored `supersample` pre-permuted, pre-windowed copies as pickles).

Writing is atomic: everything goes into a temporary folder next to `output_dir`, which is renamed into place at
the end and removed on any error, so no half-written dataset is ever left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..constants import OLD_SPLIT_NAMES, VALIDATION_SPLIT, VERSION, canonical_split
from ..tokenization import (
    TokenLayout,
    TokenNormalization,
    detect_batchnorm_modules,
    detect_transposed_weights,
    permute_state_dict,
    weight_matching,
)
from ..tokenization.memory import check_fits_in_memory, empty_hugepage
from ..utils.io import (
    check_output_apart_from_inputs,
    file_checksum,
    make_temporary_dir,
    output_lock,
    read_json,
    verify_file_checksum,
    write_json_atomic,
)
from ..utils.threads import torch_threads
from .info import (
    DATA_DIR,
    DATA_PATH_TEMPLATE,
    INFO_PATH,
    LAYOUT_PATH,
    META_DIR,
    NORMALIZATION_PATH,
    ZOO_DATASET_TAG,
    SaneDatasetInfo,
    SplitInfo,
)
from .windows import TOKENS_COLUMN
from .zoo import DEFAULT_WEIGHT_THRESHOLD, ZOO_FORMATS, CheckpointRecord, ZooFormat, ZooReader, open_zoo


logger = logging.getLogger(__name__)

# What a conversion was made from (its options and the zoo's model ids), so that the same command run again can see
# that the dataset is already complete and skip it.
CONVERSION_PATH = f"{META_DIR}/conversion.json"
# `ConvertConfig` options that do not change the dataset.
_CONVERSION_RUN_CONTROL = ("output_dir", "overwrite", "num_threads", "push_to_hub", "hub_private", "private")
# Properties first in this order (the original's result keys, docs/zoo_dataset_format.md), then the rest sorted.
_PROPERTY_ORDER = ("test_acc", "train_acc", "val_acc", "test_loss", "train_loss", "val_loss", "ggap")
# Tokenize this many checkpoints per call (bounded by bytes too): one batched gather instead of many small ones.
# The byte bound caps peak memory for large checkpoints: a batch lives as weights, raw tokens, normalized tokens and
# a float64 copy for the statistics at once, so 64 MB of ResNet-18 weights (2 checkpoints) costs ~0.7 GB; larger
# batches only add memory, since one ResNet-18 is already a large copy (benchmarks/bench_scale.py).
_TOKENIZE_BATCH = 64
_TOKENIZE_BATCH_BYTES = 64 << 20


# -------------------------------------------------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class ConvertConfig:
    """Options of `sane-convert-zoo` (zoo -> tokenized Hub dataset).

    Args:
        zoo_dir (`str`): the zoo folder (or, with `zoo_format="models"`, a folder of model folders, or a
            comma-separated list of model folders / Hub model repo ids).
        output_dir (`str`): where the dataset folder is written.
        zoo_format (`str`, *optional*, defaults to `"auto"`): `auto`, `sane_hf`, `modelzoo` or `models`.

        token_size (`int`, *optional*, defaults to 0): token width `T`; 0 picks the widest row of the architecture
            (SANE §1.5, without the original's bias-only bug). The paper uses 289 for CNN3 and 288 for ResNet-18.
        tokenize_bn_stats (`bool`, *optional*, defaults to `True`): tokenize BatchNorm running statistics.
        ignore_bn (`bool`, *optional*, defaults to `False`): leave BatchNorm layers out of the tokens.
        normalization (`str`, *optional*, defaults to `"standardize"`): `standardize` (SANE §1.8) or `none`.
        canonicalize (`bool`, *optional*): map every model onto the reference model with git re-basin weight
            matching before normalization (the original's `map_to_canonical`): one permutation per model,
            found on its last converted epoch and applied to all its epochs. Removes the permutation symmetry from the
            stored tokens, so checkpoints with equal function look alike. By default (None) on, as the method does
            for every zoo, whenever the zoo's architecture is registered and its permutation spec can be derived
            (every `sane_hf` zoo architecture: MLP, CNNs, ResNet-18); off, with a log line saying why, for zoos of
            other architectures (e.g. transformers models), whose permutation symmetries are not modelled here.

        epochs (`list[str]`, *optional*, defaults to `["all"]`): epochs to convert: `all`, or numbers / ranges
            such as `21-25`.
        weight_threshold (`float`, *optional*, defaults to 1e6): drop checkpoints with any |w| above it, counted
            like NaN ones (docs/zoo_dataset_format.md#filtering); `inf` turns the check off.
        max_models (`int`, *optional*): keep this many models of the shuffled list (before splitting).
        split_fractions (`list[float]`, *optional*, defaults to `[0.7, 0.15, 0.15]`): train/val/test (or
            train/test) fractions of the models.
        seed (`int`, *optional*, defaults to 42): seed of the model shuffle (the original's `random.seed(42)`).

        shard_size_mb (`float`, *optional*, defaults to 100): maximum uncompressed token bytes per parquet shard
            (at least one checkpoint); the conversion holds up to two shards in memory.
        num_threads (`int`, *optional*, defaults to 1): `torch.set_num_threads` during the conversion (restored
            afterwards); 0 keeps torch's setting. The work is memory-bound copies; on the project's shared 2-core
            machines 1 thread converted a cnn_s zoo 2.5x faster than 2 (`benchmarks/bench_data.py`). Parquet
            shards are encoded and written by one more (Arrow) thread meanwhile.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `output_dir`.
        push_to_hub (`str`, *optional*): Hub dataset repo id to upload the folder to.
        hub_private (`bool`, *optional*, defaults to `False`): create the Hub repo as private (`private`: its
            deprecated name).
    """

    zoo_dir: str | None = field(
        default=None,
        metadata={
            "help": "Zoo folder; with --zoo_format models also a folder of model folders or a comma-separated list "
            "of model folders / Hub model repo ids."
        },
    )
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the tokenized dataset into."})
    zoo_format: Literal["auto", ZooFormat] = field(
        default="auto", metadata={"help": f"Layout of the zoo: auto or one of {list(ZOO_FORMATS)}."}
    )
    token_size: int = field(
        default=0, metadata={"help": "Token width T; 0 = the widest row of the architecture (SANE §1.5)."}
    )
    tokenize_bn_stats: bool = field(default=True, metadata={"help": "Tokenize BatchNorm running statistics."})
    ignore_bn: bool = field(default=False, metadata={"help": "Leave BatchNorm layers out of the tokens entirely."})
    normalization: Literal["standardize", "none"] = field(
        default="standardize",
        metadata={"help": "Per-layer normalization fitted on the train split: standardize (SANE §1.8) or none."},
    )
    canonicalize: bool | None = field(
        default=None,
        metadata={
            "help": "Map every model onto the reference model with weight matching before normalization "
            "(the original's map_to_canonical). Default: on when the zoo's architecture is registered (its permutation "
            "spec is known), off otherwise."
        },
    )
    epochs: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Epochs to convert: 'all', or numbers and ranges, e.g. --epochs 21-25 or --epochs 0 5 10."},
    )
    weight_threshold: float = field(
        default=DEFAULT_WEIGHT_THRESHOLD,
        metadata={
            "help": "Drop checkpoints with any |weight| above this, counted like NaN ones (SANE §2.2; the original "
            "used 100 for CNN zoos); inf turns the check off."
        },
    )
    max_models: int | None = field(
        default=None, metadata={"help": "Use only this many models of the shuffled list (before splitting)."}
    )
    split_fractions: list[float] = field(
        default_factory=lambda: [0.7, 0.15, 0.15],
        metadata={"help": "Fractions of models for train/val/test (3 values) or train/test (2 values); sum 1."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the model shuffle that defines the splits."})
    shard_size_mb: float = field(
        default=100.0, metadata={"help": "Maximum uncompressed token megabytes per parquet shard."}
    )
    num_threads: int = field(
        default=1, metadata={"help": "torch threads during the conversion (0: keep torch's setting)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output_dir."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo id (org/name) to upload the dataset folder to."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset repo as private."})
    private: bool | None = field(default=None, metadata={"help": "Deprecated: use --hub_private."})

    def __post_init__(self):
        if self.private is not None:
            # One name for the flag in every script (pretrain and generate call it --hub_private).
            warnings.warn("`private` is deprecated; use `hub_private`.", FutureWarning, stacklevel=3)
            self.hub_private, self.private = bool(self.private), None
        if self.zoo_format != "auto" and self.zoo_format not in ZOO_FORMATS:
            raise ValueError(f"`zoo_format` must be 'auto' or one of {list(ZOO_FORMATS)}, got {self.zoo_format!r}.")
        if not isinstance(self.token_size, int) or isinstance(self.token_size, bool) or self.token_size < 0:
            raise ValueError(f"`token_size` must be an int >= 0 (0 = automatic), got {self.token_size!r}.")
        if self.normalization not in ("standardize", "none"):
            raise ValueError(f"`normalization` must be 'standardize' or 'none', got {self.normalization!r}.")
        if isinstance(self.epochs, str | int):
            self.epochs = [self.epochs]
        self.epoch_list()  # validates
        check_split_fractions(self.split_fractions)
        if not (isinstance(self.weight_threshold, int | float) and self.weight_threshold > 0):
            raise ValueError(f"`weight_threshold` must be a positive number, got {self.weight_threshold!r}.")
        if self.max_models is not None and (not isinstance(self.max_models, int) or self.max_models < 1):
            raise ValueError(f"`max_models` must be a positive int or None, got {self.max_models!r}.")
        if not (isinstance(self.shard_size_mb, int | float) and self.shard_size_mb > 0):
            raise ValueError(f"`shard_size_mb` must be a positive number, got {self.shard_size_mb!r}.")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise ValueError(f"`num_threads` must be an int >= 0, got {self.num_threads!r}.")

    def epoch_list(self) -> list[int] | None:
        """The requested epochs, or `None` for all."""
        return parse_epochs(self.epochs)


def parse_epochs(epochs: str | int | Iterable[str | int] | None) -> list[int] | None:
    """`"all"`/`None` -> `None`; numbers and inclusive ranges (`"21-25"`, `"0,5,10"`) -> a sorted list."""
    if epochs is None:
        return None
    items = [epochs] if isinstance(epochs, str | int) else list(epochs)
    parts: list[str | int] = []
    for item in items:
        if isinstance(item, str):
            parts.extend(p.strip() for p in item.split(",") if p.strip())
        else:
            parts.append(item)
    if [str(p).lower() for p in parts] == ["all"]:
        return None
    result: set[int] = set()
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool) and part >= 0:
            result.add(part)
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(part))
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise ValueError(
                f"`epochs` must be 'all' or non-negative epoch numbers / ranges like '21-25', got {epochs!r}."
            )
        low = int(match.group(1))
        result.update(range(low, int(match.group(2) or low) + 1))
    if not result:
        raise ValueError(f"`epochs` selects no epoch: {epochs!r}.")
    return sorted(result)


def _epoch_ranges(epochs: Sequence[int]) -> str:
    """`[0, 1, 2, 5]` -> `"0-2, 5"` (for messages)."""
    parts: list[str] = []
    for epoch in epochs:
        if parts and epoch == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{epoch}"
        else:
            parts.append(str(epoch))
    return ", ".join(parts) or "none"


def check_split_fractions(fractions: Sequence[float]) -> list[float]:
    """Validate 2 (train/test) or 3 (train/val/test) non-negative fractions summing to 1."""
    fractions = list(fractions)
    if len(fractions) not in (2, 3) or any(not isinstance(f, int | float) or f < 0 for f in fractions):
        raise ValueError(f"`split_fractions` must be 2 or 3 non-negative numbers, got {fractions!r}.")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"`split_fractions` must sum to 1, got {fractions!r} (sum {sum(fractions)}).")
    return [float(f) for f in fractions]


def split_model_ids(
    model_ids: Iterable[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    max_models: int | None = None,
) -> dict[str, list[str]]:
    """Split models (never checkpoints) into train/validation/test, as the original (docs/zoo_dataset_format.md).

    The ids are sorted, shuffled with `random.Random(seed)`, truncated to `max_models`, and cut into the first
    `floor(f_train * N)` (train), the next `floor(f_val * N)` (validation) and the rest (test). With two fractions
    there is no validation split. Each split is returned sorted.
    """
    fractions = check_split_fractions(fractions)
    ids = sorted(model_ids)
    random.Random(seed).shuffle(ids)
    if max_models is not None:
        ids = ids[:max_models]
    n = len(ids)
    n_train = math.floor(fractions[0] * n)
    if len(fractions) == 2:
        return {"train": sorted(ids[:n_train]), "test": sorted(ids[n_train:])}
    n_val = math.floor(fractions[1] * n)
    return {
        "train": sorted(ids[:n_train]),
        VALIDATION_SPLIT: sorted(ids[n_train : n_train + n_val]),
        "test": sorted(ids[n_train + n_val :]),
    }


# -------------------------------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------------------------------


def _property_dtype(types: set[type], name: str) -> str:
    if types <= {bool}:
        return "bool"
    if types <= {bool, int}:
        return "int64"
    if types <= {bool, int, float}:
        return "float64"
    if str in types and len(types) > 1:
        logger.warning("Property %r mixes %s values; storing it as a string.", name, sorted(t.__name__ for t in types))
    return "string"


def infer_property_dtypes(reader: ZooReader, model_ids: Iterable[str]) -> dict[str, str]:
    """Property column -> `datasets.Value` dtype, from the metadata of every selected checkpoint (no weights read).

    A property missing for some checkpoints is stored as null there.
    """
    types: dict[str, set[type]] = {}
    for model_id in model_ids:
        for props in reader.properties(model_id).values():
            for name, value in props.items():
                if name != "epoch" and value is not None:
                    types.setdefault(name, set()).add(type(value))
    ordered = [n for n in _PROPERTY_ORDER if n in types] + sorted(n for n in types if n not in _PROPERTY_ORDER)
    return {name: _property_dtype(types[name], name) for name in ordered}


def _features(num_tokens: int, token_size: int, properties: Mapping[str, str]):
    from datasets import Array2D, Features, Value

    return Features(
        {
            "model_id": Value("string"),
            "epoch": Value("int64"),
            TOKENS_COLUMN: Array2D(shape=(num_tokens, token_size), dtype="float32"),
            **{name: Value(dtype) for name, dtype in properties.items()},
        }
    )


def _cast(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "string":
        return value if isinstance(value, str) else json.dumps(value)
    return {"bool": bool, "int64": int, "float64": float}[dtype](value)


class _ShardWrites:
    """Parquet shards written by one background thread, into float32 shard buffers that it lends out.

    Encoding a shard is the largest cost of a conversion (~0.35-0.45 s per ResNet-18 row: nested-list levels,
    byte-stream-split, zstd and the disk write, all single-threaded in Arrow, which releases the GIL meanwhile), so
    it runs while the main thread reads, tokenizes and normalizes the next shard. One write at a time: at most two
    shard buffers exist (the one being written and the one being filled), reused across shards and splits, so a
    shard costs no fresh page faults. Two concurrent writes converted ResNet-18 checkpoints ~15% faster on 2 cores,
    but raised the peak RSS from 1.2 to 1.8 GB (Arrow's buffers per write) and the CPU time by ~10%.
    """

    def __init__(self) -> None:
        self._executor = None
        self._pending = None  # the future of the write in flight
        self._writing: torch.Tensor | None = None  # and the buffer it reads
        self._free: list[torch.Tensor] = []

    def buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 buffer of `shape` that no write reads (its pages become resident as they are filled)."""
        while self._free:
            buffer = self._free.pop()
            if tuple(buffer.shape) == shape:
                return buffer
        return empty_hugepage(shape, torch.float32)

    def submit(self, buffer: torch.Tensor, table, path: Path, **options: Any) -> None:
        """Write `table` (whose tokens are a view of `buffer`) to `path` once the previous write is done."""
        import pyarrow.parquet as pq

        self.wait()
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sane_hf-shards")
        self._pending = self._executor.submit(pq.write_table, table, path, **options)
        self._writing = buffer

    def wait(self) -> None:
        """Wait for the write in flight (raising its error, if any); its buffer becomes free again."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.result()
        finally:
            if self._writing is not None:
                self._free.append(self._writing)
                self._writing = None

    def close(self, *, abort: bool = False) -> None:
        """Wait for the last write (with `abort`, ignoring its error: the files are about to be removed)."""
        try:
            self.wait()
        except Exception:
            if not abort:
                raise
        finally:
            if self._executor is not None:
                self._executor.shutdown()  # waits for a write still running (an interrupted `wait`)
                self._executor = None
            self._free.clear()


class _ShardWriter:
    """Rows of one split -> parquet shards of at most `max_bytes` token bytes.

    The tokens of a shard are written straight into a reused float32 buffer (`add`'s `write`) and handed to Arrow
    without a copy: no list of rows and no `np.stack` of the shard (for a ResNet-18 row, the copy and page faults
    of a fresh 62 MB array, ~30 ms, benchmarks/bench_scale.py). `writes` encodes the full shards in the background:
    at most two shards are in memory (one being filled, one being written).
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        features,
        properties: Mapping[str, str],
        max_bytes: int,
        writes: _ShardWrites,
        owns: Callable[[int], bool] | None = None,
    ) -> None:
        self.folder = folder
        # Sharded conversion (`sharded_conversion.py`): `owns(i)` says whether shard i is written here; the rows of
        # the others are counted but neither normalized nor encoded.
        self.owns = owns
        self.num_shards = 0
        self.split = split
        self.features = features
        self.schema = features.arrow_schema
        self.properties = dict(properties)
        self.max_bytes = max_bytes
        self.writes = writes
        self.num_tokens, self.token_size = features[TOKENS_COLUMN].shape
        self.row_bytes = self.num_tokens * self.token_size * 4
        # Array2D storage has int32 list offsets: a shard holds fewer than 2**31 token values.
        self.max_rows_by_offsets = (2**31 - 1) // (self.num_tokens * self.token_size)
        if self.max_rows_by_offsets < 1:
            raise ValueError(
                f"A checkpoint of {self.num_tokens} x {self.token_size} tokens exceeds the 2**31 values an Array2D "
                "parquet row can hold."
            )
        # Rows per shard: as many as fit in max_bytes, at least one.
        self.capacity = max(1, min(max_bytes // self.row_bytes, self.max_rows_by_offsets))
        self.num_rows = 0
        self._files: list[Path] = []
        self._buffer: torch.Tensor | None = None  # taken from `writes` on a shard's first row
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._model_ids: list[str] = []
        self._epochs: list[int] = []
        self._props: dict[str, list[Any]] = {name: [] for name in self.properties}

    def add(
        self,
        tokens: torch.Tensor,
        records: Sequence[CheckpointRecord],
        write: Callable[..., Any] | None = None,
    ) -> None:
        """Append one row per record; `tokens[i]` are the tokens of `records[i]`.

        `write(tokens[i:j], out=rows)` stores them into `rows`, a float32 `[j - i, S, T]` view of the shard buffer
        (e.g. `partial(normalization.normalize, layout=layout)`); by default they are copied.
        """
        done = 0
        while done < len(records):
            if self._count == self.capacity:
                self._flush()
            if self.owns is not None and not self.owns(self.num_shards):
                stop = done + min(len(records) - done, self.capacity - self._count)
                self._count += stop - done
                done = stop
                continue
            if self._buffer is None:
                self._buffer = self.writes.buffer((self.capacity, self.num_tokens, self.token_size))
            stop = done + min(len(records) - done, self.capacity - self._count)
            rows = self._buffer[self._count : self._count + stop - done]
            if write is None:
                rows.copy_(tokens[done:stop])
            else:
                write(tokens[done:stop], out=rows)
            for record in records[done:stop]:
                self._model_ids.append(record.model_id)
                self._epochs.append(record.epoch)
                for name, dtype in self.properties.items():
                    self._props[name].append(_cast(record.properties.get(name), dtype))
            self._count += stop - done
            done = stop

    def _token_array(self):
        import pyarrow as pa
        from datasets.features.features import Array2DExtensionType

        n, S, T = self._count, self.num_tokens, self.token_size
        values = pa.array(self._buffer[:n].numpy().reshape(-1), type=pa.float32())  # no copy: a view of the buffer
        # Array2D storage is list<list<float32>>: build both offset levels directly (no Python objects per value).
        inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n * S * T + 1, T, dtype=np.int32)), values)
        outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * S + 1, S, dtype=np.int32)), inner)
        return pa.ExtensionArray.from_storage(Array2DExtensionType((S, T), "float32"), outer)

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._count:
            return
        if self.owns is not None and not self.owns(self.num_shards):
            self.num_rows += self._count
            self.num_shards += 1
            self._reset()
            return
        columns = {
            "model_id": pa.array(self._model_ids, type=pa.string()),
            "epoch": pa.array(self._epochs, type=pa.int64()),
            TOKENS_COLUMN: self._token_array(),
        }
        for name in self.properties:
            columns[name] = pa.array(self._props[name], type=self.schema.field(name).type)
        table = pa.table(columns, schema=self.schema)
        path = self.folder / f"{self.split}-{self.num_shards:05d}.partial"
        strings = ["model_id", *(n for n, d in self.properties.items() if d == "string")]
        self.writes.submit(
            self._buffer,
            table,
            path,
            compression="zstd",
            # Weights are noise to a dictionary or min/max statistics; byte-stream-split + zstd shrinks float32
            # tokens (and their zero padding) by ~30% and reads faster than plain encoding.
            use_dictionary=strings,
            write_statistics=[n for n in columns if n != TOKENS_COLUMN],
            column_encoding={f"{TOKENS_COLUMN}.list.element.list.element": "BYTE_STREAM_SPLIT"},
        )
        self.num_rows += self._count
        self.num_shards += 1
        self._files.append(path)
        self._buffer = None  # now `writes`'s until written
        self._reset()

    def flush(self) -> None:
        """Hand the last (partial) shard to `writes`."""
        self._flush()

    def shard_names(self) -> list[str]:
        """The final names of every shard of the split, `<split>-<i:05d>-of-<n:05d>.parquet` (those written here or
        not)."""
        n = self.num_shards
        return [Path(DATA_PATH_TEMPLATE.format(split=self.split, shard_index=i, num_shards=n)).name for i in range(n)]

    def rename(self) -> list[Path]:
        """Rename the shards written here to their final names (after `writes.close()`); returns their paths."""
        final = []
        for path in self._files:
            target = self.folder / self.shard_names()[int(path.stem.rsplit("-", 1)[1])]
            os.replace(path, target)
            final.append(target)
        return final


def _batched(records: Iterable[CheckpointRecord]) -> Iterator[list[CheckpointRecord]]:
    batch: list[CheckpointRecord] = []
    size = 0
    for record in records:
        batch.append(record)
        size += sum(t.numel() * t.element_size() for t in record.state_dict.values())
        if len(batch) >= _TOKENIZE_BATCH or size >= _TOKENIZE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _BatchTokenizer:
    """Raw tokens of a batch of records, written into one reused buffer.

    Tokenizing checkpoint by checkpoint into a preallocated `[B, S, T]` buffer avoids the per-key stack of a list
    input and the page faults of a fresh multi-hundred-megabyte tensor per batch (ResNet zoos). The returned tensor
    is only valid until the next call.
    """

    def __init__(self, layout: TokenLayout) -> None:
        self.layout = layout
        self.buffer: torch.Tensor | None = None

    def __call__(self, batch: Sequence[CheckpointRecord]) -> torch.Tensor:
        layout = self.layout
        if self.buffer is None or self.buffer.shape[0] < len(batch):
            self.buffer = torch.empty(len(batch), layout.num_tokens, layout.token_size, dtype=layout.token_dtype)
        keys = layout.keys
        for row, record in zip(self.buffer, batch):
            state_dict = record.state_dict
            if list(state_dict) != keys:
                # Same ordered shapes, other names (e.g. Dropout modules shift `module_list` indices; the readers
                # checked the shapes): map onto the reference's keys by position, as the original's key walk does.
                state_dict = dict(zip(keys, state_dict.values()))
            # The readers already dropped non-finite checkpoints (SANE §2.2): skip tokenize's second scan.
            layout.tokenize(state_dict, check_finite=False, out=row)
        return self.buffer[: len(batch)]


def _token_batches(records: Iterable[CheckpointRecord], layout: TokenLayout, bar) -> Iterator[torch.Tensor]:
    """Raw `[B, S, T]` tokens of `records`, batch by batch (the stream `TokenNormalization.fit` consumes)."""
    tokenize = _BatchTokenizer(layout)
    for batch in _batched(records):
        bar.update(len(batch))
        yield tokenize(batch)


def _permutation_spec_known(architecture: str | None, model_kwargs: Mapping[str, Any] | None) -> bool:
    """Whether a zoo of `architecture` can be canonicalized: it is registered and its permutation spec derives."""
    from ..tokenization import permutation_spec_from_module
    from ..zoo_models import build_zoo_model

    if architecture is None or model_kwargs is None:
        logger.info("Not canonicalizing: the zoo does not name a registered architecture (no permutation spec).")
        return False
    try:
        permutation_spec_from_module(build_zoo_model(architecture, **model_kwargs))
    except (ValueError, KeyError, TypeError, NotImplementedError) as err:
        logger.info("Not canonicalizing the %s zoo: its permutation spec cannot be derived (%s).", architecture, err)
        return False
    return True


class _Canonicalizer:
    """Per-model weight-matching permutations onto the reference model (docs/method.md#canonicalization).

    The target is the reference model's last converted epoch (a trained network; matching onto an initialization
    would align models by random init weights). Each model's permutation is found once, on its last converted
    epoch that passes the reader's filter, cached (a few small index tensors per model), and applied to every epoch of that model, in both
    passes of the conversion (normalization fit and writing). Every model's matching starts from the same seeded
    generator, so the result does not depend on the order in which models are visited.
    """

    def __init__(self, reader: ZooReader, reference_model_id: str, architecture: str | None, model_kwargs, seed: int):
        from ..tokenization import permutation_spec_from_module
        from ..zoo_models import build_zoo_model

        if architecture is None or model_kwargs is None:
            raise ValueError(
                f"{reader.path}: canonicalize=True needs the zoo's architecture to derive its permutation spec; "
                "this zoo does not name a registered architecture (convert with canonicalize=False)."
            )
        self.reader = reader
        self.seed = seed
        module = build_zoo_model(architecture, **model_kwargs)
        self.spec = permutation_spec_from_module(module)
        self.keys = list(module.state_dict())
        self.reference = self._last_finite(reference_model_id)
        self.spec.validate(self.reference)
        self.permutations: dict[str, dict[str, torch.Tensor]] = {}

    def _by_position(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Members may name their keys differently (see `_BatchTokenizer`); the spec uses the architecture's names.
        if list(state_dict) == self.keys:
            return dict(state_dict)
        return dict(zip(self.keys, state_dict.values()))

    def _last_finite(self, model_id: str) -> dict[str, torch.Tensor]:
        member = self.reader.member(model_id)
        for epoch in reversed(self.reader.selected_epochs(member)):
            state_dict = self.reader.load_state_dict(member, epoch)
            # The reader's own filter (SANE §2.2), so the matched epoch is one the conversion keeps.
            if self.reader._filter_reason(state_dict) is None:
                return self._by_position(state_dict)
        raise ValueError(
            f"{member.path}: no checkpoint of model {model_id!r} passes the filter (finite, |w| <= "
            f"{self.reader.weight_threshold}); expected at least one to canonicalize the model with."
        )

    def permutations_of(self, model_id: str) -> dict[str, torch.Tensor]:
        if model_id not in self.permutations:
            generator = torch.Generator().manual_seed(self.seed)
            self.permutations[model_id] = weight_matching(
                self.spec, self.reference, self._last_finite(model_id), generator=generator
            )
        return self.permutations[model_id]

    def __call__(self, records: Iterable[CheckpointRecord]) -> Iterator[CheckpointRecord]:
        for record in records:
            state_dict = self._by_position(record.state_dict)
            permuted = permute_state_dict(state_dict, self.spec, self.permutations_of(record.model_id))
            yield dataclasses.replace(record, state_dict=permuted)


def build_layout(
    record: CheckpointRecord, token_size: int = 0, tokenize_bn_stats: bool = True, ignore_bn: bool = False
) -> TokenLayout:
    """The token layout of a zoo, from its reference checkpoint (the first kept train checkpoint, SANE §2.3).

    BatchNorm modules are taken from the architecture when it is known and its state_dict keys match, else detected
    from the keys. A transformers checkpoint's `Conv1D` weights (`[in, out]`, GPT-2) are found on its architecture,
    built from the `config.json` next to the weights. `token_size=0` uses the widest row (SANE §1.5: the intended
    rule, over all layers).
    """
    state_dict = record.state_dict
    batchnorm_modules = None
    transposed_weights = _transformers_conv1d_weights(record)
    if record.architecture is not None and record.model_kwargs is not None:
        from ..zoo_models import build_zoo_model

        try:
            module = build_zoo_model(record.architecture, **record.model_kwargs)
        except (ValueError, TypeError) as err:
            logger.debug("Could not build %s to find its BatchNorm layers (%s).", record.architecture, err)
        else:
            if list(module.state_dict()) == list(state_dict):
                batchnorm_modules = detect_batchnorm_modules(module)
    if token_size == 0:
        widths = TokenLayout.from_state_dict(
            state_dict,
            1,
            tokenize_bn_stats,
            ignore_bn,
            batchnorm_modules=batchnorm_modules,
            transposed_weights=transposed_weights,
        )
        token_size = max(layer.row_width for layer in widths.layers)
        logger.info("Token size 0: using the widest row, T = %d.", token_size)
    else:
        # A token holds at most one row, so a checkpoint has at least one token per weight row: check the least
        # the conversion holds (a checkpoint's raw tokens and its row of a shard) before anything [S, T] is allocated.
        rows = sum(v.shape[0] for v in state_dict.values() if v.is_floating_point() and v.dim() >= 2)
        check_fits_in_memory(
            f"`token_size`={token_size} (at least {rows} tokens x {token_size} values x 4 bytes, twice, per "
            "checkpoint)",
            rows * token_size * 4 * 2,
        )
    return TokenLayout.from_state_dict(
        state_dict,
        token_size=token_size,
        tokenize_bn_stats=tokenize_bn_stats,
        ignore_bn=ignore_bn,
        batchnorm_modules=batchnorm_modules,
        transposed_weights=transposed_weights,
    )


def _transformers_conv1d_weights(record: CheckpointRecord) -> list[str]:
    """Keys of the `Conv1D` weights of a transformers checkpoint (empty for anything else).

    The model class is taken from the `config.json` next to the weights (`architectures`, else the base model of its
    `model_type`) and built on the meta device, so nothing is allocated or downloaded.
    """
    source = Path(record.source)
    config_file = (source if source.is_dir() else source.parent) / "config.json"
    if record.architecture is None or not config_file.is_file():
        return []
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(config, dict) or config.get("model_type") != record.architecture:
        return []
    import transformers

    try:
        model_config = transformers.AutoConfig.for_model(
            config["model_type"], **{k: v for k, v in config.items() if k != "model_type"}
        )
        class_names = config.get("architectures") or []
        with torch.device("meta"):
            if class_names and hasattr(transformers, class_names[0]):
                module = getattr(transformers, class_names[0])(model_config)
            else:
                module = transformers.AutoModel.from_config(model_config)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        logger.warning("Could not build the %s model to find its Conv1D weights (%s).", record.architecture, err)
        return []
    return [key for key in detect_transposed_weights(module) if key in record.state_dict]


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir}: output_dir exists and is a file; expected a folder path.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir}: output_dir exists and is not empty; pass overwrite=True (--overwrite) to replace it."
        )


def _move_into_place(tmp: Path, output_dir: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(output_dir, old)
        try:
            os.rename(tmp, output_dir)
        except BaseException:
            os.rename(old, output_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, output_dir)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ckpt", disable=not enabled)


def write_zoo_dataset(
    reader: ZooReader,
    output_dir: str | os.PathLike,
    *,
    token_size: int = 0,
    tokenize_bn_stats: bool = True,
    ignore_bn: bool = False,
    normalization: str = "standardize",
    canonicalize: bool | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    max_models: int | None = None,
    shard_size_mb: float = 100.0,
    overwrite: bool = False,
    repo_id: str | None = None,
    show_progress: bool = True,
    conversion: Mapping[str, Any] | None = None,
    shards: Any | None = None,
) -> SaneDatasetInfo:
    """Tokenize the zoo of `reader` into a Hub-style dataset folder at `output_dir` (atomically).

    Steps: list and split the models (`split_model_ids`); build the layout from the first kept train checkpoint;
    fit the normalization on the train checkpoints (streamed); then, split by split, tokenize, normalize and write
    the checkpoints into parquet shards; finally write `meta/*.json` and the card, and rename the folder into place.

    Args:
        reader (`ZooReader`): an opened zoo (`open_zoo(...)`); its `epochs` and `weight_threshold` apply.
        output_dir (`str` or `os.PathLike`): the dataset folder to create.
        repo_id (`str`, *optional*): the Hub repo the card's snippets should name.
        show_progress (`bool`, *optional*, defaults to `True`): tqdm progress bars.
        conversion (`Mapping`, *optional*): what the dataset is converted from, written to `meta/conversion.json`
            (`convert_zoo` reads it to skip a rerun of a finished conversion).
        shards (`ShardAssignment`, *optional*): convert as one of several shard workers
            (`sharded_conversion.py`): only the parquet shards it owns are written, into a staging folder shared by
            the workers, with a record of the metadata; `finalize_sharded_conversion` completes the dataset.
        Other arguments: see `ConvertConfig`.

    Returns:
        `SaneDatasetInfo`: the written `meta/info.json`.

    Raises:
        `FileExistsError`: `output_dir` is not empty and `overwrite=False`.
        `ValueError`: `output_dir` is, contains or lies inside the zoo folder.
        `ZooFormatError`: bad zoo input (the message names the file); nothing is left behind.
    """
    output_dir = Path(output_dir)
    check_output_apart_from_inputs(output_dir, {"zoo_dir": reader.path})
    _check_output_dir(output_dir, overwrite)
    if normalization not in ("standardize", "none"):
        raise ValueError(f"`normalization` must be 'standardize' or 'none', got {normalization!r}.")
    fractions = check_split_fractions(split_fractions)
    splits = split_model_ids(reader.model_ids, fractions, seed=seed, max_models=max_models)
    if not splits["train"]:
        raise ValueError(
            f"{reader.path}: the train split is empty ({len(reader.model_ids)} models, fractions {fractions}); "
            "a zoo needs enough models for at least one train model."
        )
    reader.reset_report()  # a reader may have been used before: count this conversion only
    selected = [model_id for ids in splits.values() for model_id in ids]
    properties = infer_property_dtypes(reader, selected)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Also removes the leftovers of a killed conversion (a shard worker: its own, in the shared staging folder).
    tmp = make_temporary_dir(output_dir) if shards is None else shards.staging_dir(output_dir)
    writes = _ShardWrites()
    try:
        # 1. Reference checkpoint and layout: the first kept train checkpoint (train is in the reference's split,
        #    as in the original, SANE §2.3 item 5). The train records are streamed once here for the statistics.
        train_records = reader.iter_checkpoints(splits["train"], record=False)
        first = next(train_records, None)
        if first is None:
            threshold = "inf" if math.isinf(reader.weight_threshold) else reader.weight_threshold
            if not any(reader.selected_epochs(reader.member(m)) for m in splits["train"]):
                available = sorted({e for m in splits["train"] for e in reader.member(m).epochs})
                raise ValueError(
                    f"{reader.path}: `epochs` {reader.epochs} selects no checkpoint of the train split; its models "
                    f"have epochs {_epoch_ranges(available)}."
                )
            raise ValueError(
                f"{reader.path}: no checkpoint of the train split survived filtering: each of its "
                f"{sum(len(reader.selected_epochs(reader.member(m))) for m in splits['train'])} checkpoints has "
                f"NaN/Inf weights or |w| > weight_threshold={threshold}; expected at least one finite checkpoint "
                "to fit the layout and normalization on."
            )
        layout = build_layout(first, token_size, tokenize_bn_stats, ignore_bn)
        logger.info("Layout of %s (from %s epoch %d): %s", first.architecture, first.model_id, first.epoch, layout)
        # Hyper-parameter kwargs (activation, dropout, ...) vary between members; the dataset records the reference's.
        reference = {"model_id": first.model_id, "epoch": first.epoch, "source": first.source}
        architecture, model_kwargs = first.architecture, first.model_kwargs
        if canonicalize is None:
            canonicalize = _permutation_spec_known(architecture, model_kwargs)
        canonical = _Canonicalizer(reader, first.model_id, architecture, model_kwargs, seed) if canonicalize else None
        if canonical is not None:
            reference["canonical_epoch"] = reader.selected_epochs(reader.member(first.model_id))[-1]
            first, train_records = next(canonical([first])), canonical(train_records)
        n_train = sum(len(reader.selected_epochs(reader.member(m))) for m in splits["train"])
        if normalization == "standardize":
            with _progress(n_train, "fit normalization (train)", show_progress) as bar:
                norm = TokenNormalization.fit(_token_batches(chain([first], train_records), layout, bar), layout)
        else:
            norm = TokenNormalization.fit(torch.empty(0), layout, mode="none")
        first = train_records = None  # release the reference checkpoint

        # 2. The splits, at most two shards in memory at a time (one being filled, one being written).
        (tmp / DATA_DIR).mkdir(exist_ok=shards is not None)
        features = _features(layout.num_tokens, layout.token_size, properties)
        writers: dict[str, tuple[_ShardWriter, set[str]]] = {}
        for split, model_ids in splits.items():
            owns = None if shards is None else shards.owns_from(sum(w.num_shards for w, _ in writers.values()))
            writer = _ShardWriter(
                tmp / DATA_DIR, split, features, properties, int(shard_size_mb * (1 << 20)), writes, owns
            )
            kept: set[str] = set()
            total = sum(len(reader.selected_epochs(reader.member(m))) for m in model_ids)
            tokenize = _BatchTokenizer(layout)
            with _progress(total, f"write {split}", show_progress) as bar:
                records = reader.iter_checkpoints(model_ids)
                for batch in _batched(canonical(records) if canonical is not None else records):
                    # Normalized straight into the shard buffer (float32, rounded from the tokens' dtype).
                    writer.add(tokenize(batch), batch, partial(norm.normalize, layout=layout))
                    kept.update(r.model_id for r in batch)
                    bar.update(len(batch))
            writer.flush()
            writers[split] = (writer, kept)
        writes.close()  # every shard is on disk
        split_infos: dict[str, SplitInfo] = {}
        checksums: dict[str, dict[str, Any]] = {}  # verified by `load_zoo_dataset`, each shard tied to its split
        for split, (writer, kept) in writers.items():
            files = writer.rename()
            checksums.update({f"{DATA_DIR}/{f.name}": {"split": split, **file_checksum(f)} for f in files})
            split_infos[split] = SplitInfo(
                model_ids=sorted(kept),
                num_checkpoints=writer.num_rows,
                files=[f"{DATA_DIR}/{name}" for name in writer.shard_names()],
                num_bytes=sum(f.stat().st_size for f in files),  # a shard worker's own shards only
            )
            if not writer.num_rows:
                logger.warning("The %s split is empty (%d models assigned).", split, len(splits[split]))
        logger.info("Filtering: %s", reader.report.summary())

        # 3. Metadata and card.
        info = SaneDatasetInfo(
            token_size=layout.token_size,
            num_tokens=layout.num_tokens,
            num_layers=layout.num_layers,
            splits=split_infos,
            properties=properties,
            architecture=architecture,
            model_kwargs=model_kwargs,
            reference=reference,
            max_positions=layout.max_positions,
            tokens_normalized=normalization != "none",
            canonicalized=canonicalize,
            normalization_mode=norm.mode,
            tokenize_bn_stats=layout.tokenize_bn_stats,
            ignore_bn=layout.ignore_bn,
            epochs=reader.epochs,
            split_fractions=fractions,
            split_seed=seed,
            max_models=max_models,
            weight_threshold=reader.weight_threshold,
            source=reader.source_info(),
            filtering=reader.report.to_dict(),
            features=features.to_dict(),
            checksums=checksums,
            codebase_version=VERSION,
        )
        if shards is not None:  # the metadata is written once every shard is (`finalize_sharded_conversion`)
            shards.write_record(tmp, info, layout.to_dict(), norm.to_dict(), conversion)
            return info
        write_meta_and_card(tmp, info, layout.to_dict(), norm.to_dict(), conversion, repo_id)
        _move_into_place(tmp, output_dir)
    except BaseException:
        try:
            writes.close(abort=True)  # no write may still be creating files in `tmp`
        finally:
            if shards is None:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shards.discard(tmp)
        raise
    logger.info(
        "Wrote %s: %s.",
        output_dir,
        ", ".join(f"{s} {i.num_models} models / {i.num_checkpoints} checkpoints" for s, i in split_infos.items()),
    )
    return info


def write_meta_and_card(
    folder: Path,
    info: SaneDatasetInfo,
    layout: Mapping[str, Any],
    normalization: Mapping[str, Any],
    conversion: Mapping[str, Any] | None,
    repo_id: str | None,
) -> None:
    """Write `meta/info.json`, `meta/layout.json`, `meta/normalization.json`, `meta/conversion.json` (when given)
    and the dataset card into a dataset folder whose shards are written."""
    (folder / META_DIR).mkdir()
    write_json_atomic(folder / INFO_PATH, info.to_dict())
    write_json_atomic(folder / LAYOUT_PATH, layout)
    write_json_atomic(folder / NORMALIZATION_PATH, normalization)
    if conversion is not None:
        write_json_atomic(folder / CONVERSION_PATH, conversion)
    from ..hub.cards import build_dataset_card

    build_dataset_card(info, repo_id=repo_id, root=folder).save(folder / "README.md")


@dataclass
class ConvertResult:
    """What `convert_zoo` did: the dataset folder, its info, the wall time and (if pushed) the Hub URL."""

    output_dir: Path
    info: SaneDatasetInfo
    seconds: float
    num_bytes: int
    url: str | None = None
    skipped: bool = False  # `output_dir` already held this conversion (same zoo models and options)


def _conversion_record(config: ConvertConfig, reader: ZooReader) -> dict[str, Any]:
    options = {key: value for key, value in asdict(config).items() if key not in _CONVERSION_RUN_CONTROL}
    # Through JSON, so that it compares equal to the stored record (tuples become lists).
    return json.loads(json.dumps({"options": options, "zoo_models": sorted(reader.model_ids)}))


def _finished_conversion(output_dir: Path, record: dict[str, Any]) -> SaneDatasetInfo | None:
    """The info of the complete dataset in `output_dir` if it was converted as `record` says, else `None`."""
    try:
        stored = json.loads((output_dir / CONVERSION_PATH).read_text(encoding="utf-8"))
        info = json.loads((output_dir / INFO_PATH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return SaneDatasetInfo.from_dict(info, source=str(output_dir / INFO_PATH)) if stored == record else None


def convert_zoo(config: ConvertConfig, *, show_progress: bool = True, shards: Any | None = None) -> ConvertResult:
    """Convert a zoo into a tokenized Hub dataset folder (and push it if `config.push_to_hub`).

    Running the same conversion again (same zoo models and options) finds the finished dataset and skips the work
    (`ConvertResult.skipped`); `overwrite` converts again. With `shards` (a `ShardAssignment`), this is one worker
    of a sharded conversion (`sharded_conversion.py`): it writes its own shards and nothing is pushed.

    Example:

    ```python
    >>> from sane_hf.data import ConvertConfig, convert_zoo
    >>> result = convert_zoo(ConvertConfig(zoo_dir="runs/zoo", output_dir="runs/zoo_ds", token_size=64))
    >>> result.info.splits["train"].num_models
    14
    ```
    """
    if not config.zoo_dir:
        raise ValueError("`zoo_dir` is required: the zoo folder to convert.")
    if not config.output_dir:
        raise ValueError("`output_dir` is required: where to write the dataset folder.")
    start = time.perf_counter()
    with torch_threads(config.num_threads):
        # A second conversion would silently replace this one (shard workers write their own files side by side).
        with output_lock(config.output_dir) if shards is None else contextlib.nullcontext():
            reader = open_zoo(
                config.zoo_dir,
                config.zoo_format,
                epochs=config.epoch_list(),
                weight_threshold=config.weight_threshold,
            )
            record = _conversion_record(config, reader)
            info = None if config.overwrite else _finished_conversion(Path(config.output_dir), record)
            skipped = info is not None
            if skipped:
                logger.info(
                    "%s already holds this conversion (same zoo models and options): skipped.", config.output_dir
                )
            else:
                info = write_zoo_dataset(
                    reader,
                    config.output_dir,
                    token_size=config.token_size,
                    tokenize_bn_stats=config.tokenize_bn_stats,
                    ignore_bn=config.ignore_bn,
                    normalization=config.normalization,
                    canonicalize=config.canonicalize,
                    split_fractions=config.split_fractions,
                    seed=config.seed,
                    max_models=config.max_models,
                    shard_size_mb=config.shard_size_mb,
                    overwrite=config.overwrite,
                    repo_id=config.push_to_hub,
                    show_progress=show_progress,
                    conversion=record,
                    shards=shards,
                )
    output_dir = Path(config.output_dir)
    if shards is not None and not skipped:
        seconds = time.perf_counter() - start
        return ConvertResult(output_dir=output_dir, info=info, seconds=seconds, num_bytes=0, skipped=False)
    num_bytes = sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file())
    seconds = time.perf_counter() - start
    url = None
    if config.push_to_hub:
        url = push_zoo_dataset(output_dir, config.push_to_hub, private=config.hub_private)
    return ConvertResult(
        output_dir=output_dir, info=info, seconds=seconds, num_bytes=num_bytes, url=url, skipped=skipped
    )


# -------------------------------------------------------------------------------------------------------------------
# Hub upload
# -------------------------------------------------------------------------------------------------------------------


def push_zoo_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    tag: bool = True,
) -> str:
    """Upload a dataset folder written by `write_zoo_dataset` to a Hub dataset repo (lerobot's `push_to_hub`).

    Creates the repo if needed, uploads the folder in one commit (stale `data/` and `meta/` files of an earlier
    upload are deleted in the same commit, so `data/train-*.parquet` never matches old shards), and tags the
    revision with the format version (`ZOO_DATASET_TAG`), moving the tag if it exists.

    Returns:
        `str`: the URL of the commit.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    info_file = folder / INFO_PATH
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file}: missing; push_zoo_dataset uploads folders written by convert_zoo.")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        revision=revision,
        commit_message=commit_message or "Upload tokenized model zoo (sane_hf)",
        delete_patterns=[f"{DATA_DIR}/*", f"{META_DIR}/*"],
    )
    if tag:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        if any(t.name == ZOO_DATASET_TAG for t in refs.tags):
            api.delete_tag(repo_id, tag=ZOO_DATASET_TAG, repo_type="dataset")
        api.create_tag(repo_id, tag=ZOO_DATASET_TAG, revision=getattr(commit, "oid", None), repo_type="dataset")
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s to the Hub dataset %s (%s).", folder, repo_id, url)
    return url


# -------------------------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class SaneZooDataset:
    """A tokenized zoo: its splits, token layout, normalization and info.

    Args:
        splits (`datasets.DatasetDict`): the non-empty splits, in torch format (`tokens` come back as `[S, T]`
            float32 tensors).
        layout (`TokenLayout`): from `meta/layout.json`.
        normalization (`TokenNormalization`): from `meta/normalization.json` (fitted on train).
        info (`SaneDatasetInfo`): from `meta/info.json`.
        root (`Path`): the local folder holding `meta/` (a Hub snapshot for repo ids).
    """

    splits: Any
    layout: TokenLayout
    normalization: TokenNormalization
    info: SaneDatasetInfo
    root: Path

    def __getitem__(self, split: str):
        """The split called `split`; `"val"` (format version 1's name) is `"validation"`."""
        try:
            name = canonical_split(split)
        except ValueError as err:
            raise KeyError(str(err)) from None
        if name not in self.splits:
            raise KeyError(f"No split {split!r}; this zoo has {list(self.splits)}.")
        return self.splits[name]

    @property
    def property_names(self) -> list[str]:
        return list(self.info.properties)

    def to_state_dict(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """De-normalize and detokenize `[S, T]` / `[B, S, T]` tokens of this zoo back to a state_dict."""
        tokens = torch.as_tensor(tokens)
        if self.info.tokens_normalized:
            tokens = self.normalization.denormalize(tokens, self.layout)
        return self.layout.detokenize(tokens, copy=True)

    def window_loader(self, split: str = "train", **kwargs: Any):
        """A `WindowDataLoader` over one split (keyword arguments as `WindowDataLoader`)."""
        from .windows import WindowDataLoader

        return WindowDataLoader(self[split], self.layout, **kwargs)


# Completes "expected ..." in the error about a missing or invalid meta/ file.
_IN_CONVERTED_ZOO = "which every tokenized zoo written by `sane-convert-zoo` has there"


def load_zoo_meta(root: str | os.PathLike) -> tuple[SaneDatasetInfo, TokenLayout, TokenNormalization]:
    """Read and cross-check `meta/info.json`, `meta/layout.json` and `meta/normalization.json` of a local folder."""
    root = Path(root)
    info = SaneDatasetInfo.from_dict(
        read_json(root / INFO_PATH, f"the dataset info, {_IN_CONVERTED_ZOO}"), source=str(root / INFO_PATH)
    )
    layout_dict = read_json(root / LAYOUT_PATH, f"the token layout, {_IN_CONVERTED_ZOO}")
    try:
        layout = TokenLayout.from_dict(layout_dict)
    except ValueError as err:
        raise ValueError(f"{root / LAYOUT_PATH}: {err}") from None
    normalization_dict = read_json(root / NORMALIZATION_PATH, f"the normalization statistics, {_IN_CONVERTED_ZOO}")
    try:
        normalization = TokenNormalization.from_dict(normalization_dict)
    except ValueError as err:
        raise ValueError(f"{root / NORMALIZATION_PATH}: {err}") from None
    for name in ("num_tokens", "num_layers", "token_size"):
        if getattr(info, name) != getattr(layout, name):
            raise ValueError(
                f"{root / INFO_PATH}: {name} is {getattr(info, name)} but {LAYOUT_PATH} gives {getattr(layout, name)}."
            )
    if normalization.layer_names != [layer.name for layer in layout.layers]:
        raise ValueError(f"{root / NORMALIZATION_PATH}: its layers do not match {LAYOUT_PATH}.")
    return info, layout, normalization


def _verify_shards(root: Path, info: SaneDatasetInfo, hashes: bool = True) -> None:
    """Check that every shard `meta/info.json` lists exists and, with `hashes` for datasets that record checksums,
    has the size and sha256 written for it under its own split (a shard of another split copied over it is named as
    such)."""
    if hashes and info.checksums is None:
        logger.warning(
            "%s: written before datasets carried shard checksums (sane_hf %s); its shards are loaded unverified.",
            root,
            info.codebase_version or "?",
        )
    for split, split_info in info.splits.items():
        for file in split_info.files:
            if not (root / file).is_file():
                raise FileNotFoundError(f"{root / file}: missing; {INFO_PATH} lists it as a {split} shard.")
            if not hashes or info.checksums is None:
                continue
            recorded = info.checksums.get(file)
            if recorded is None or recorded.get("split") != split:
                raise ValueError(
                    f"{root / INFO_PATH}: lists {file} as a {split} shard but records no {split} checksum for it; "
                    "expected one per shard (an edited meta file?)."
                )
            try:
                verify_file_checksum(root / file, recorded, f"{root / INFO_PATH} ({split} shard)")
            except ValueError as err:
                digest = file_checksum(root / file)["sha256"]
                same = [
                    f"{other['split']} shard {name}"
                    for name, other in info.checksums.items()
                    if name != file and other.get("sha256") == digest
                ]
                if same:
                    raise ValueError(
                        f"{root / file}: has the content of the {same[0]}, not of the {split} shard {INFO_PATH} "
                        "records; a shard was copied over another. Restore it (or convert the zoo again)."
                    ) from None
                raise err from None


def _unreadable_shard(root: Path, info: SaneDatasetInfo) -> str:
    """The first shard of `info` that pyarrow cannot read (for a one-line error), or the folder if all read."""
    import pyarrow.parquet as pq

    for split_info in info.splits.values():
        for file in split_info.files:
            try:
                pq.read_table(root / file)
            except Exception:  # noqa: BLE001 - any failure names this file
                return f"{root / file}: corrupt or truncated parquet shard; restore it or convert the zoo again"
    return f"{root}: cannot read the parquet shards"


def load_zoo_dataset(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    *,
    cache_dir: str | None = None,
    token: str | None = None,
    streaming: bool = False,
) -> SaneZooDataset:
    """Load a tokenized zoo from a local folder or a Hub dataset repo.

    The splits come from `datasets.load_dataset` (the card's `configs` point it at `data/<split>-*.parquet`); the
    meta files from the folder, or for repo ids from `huggingface_hub.snapshot_download(repo_type="dataset",
    allow_patterns="meta/*")`.

    Args:
        path_or_repo_id (`str` or `os.PathLike`): a dataset folder or a Hub dataset repo id.
        revision (`str`, *optional*): Hub revision (e.g. the format tag `sane-zoo-v1`); ignored for folders.
        cache_dir (`str`, *optional*), token (`str`, *optional*): passed to the Hub/datasets calls.
        streaming (`bool`, *optional*, defaults to `False`): stream the shards instead of downloading them (a zoo
            larger than the disk): the splits are `datasets.IterableDataset`s (no row counts, no random access),
            batched into windows by `StreamingWindowLoader`. The meta files are still downloaded.

    Raises:
        `ZooDatasetVersionError`: the dataset has another format version.
        `FileNotFoundError`: a meta file or a data shard is missing (named in the message).

    Example:

    ```python
    >>> zoo = load_zoo_dataset("runs/zoo_ds")
    >>> zoo.splits["train"][0]["tokens"].shape
    torch.Size([66, 64])
    ```
    """
    import datasets
    import pyarrow

    path = Path(path_or_repo_id)
    if path.is_dir():
        root, source, revision = path, str(path), None
    elif path.exists():
        raise ValueError(f"{path}: expected a dataset folder or a Hub dataset repo id, found a file.")
    else:
        from huggingface_hub import snapshot_download

        root = Path(
            snapshot_download(
                str(path_or_repo_id),
                repo_type="dataset",
                revision=revision,
                allow_patterns=[f"{META_DIR}/*", "README.md"],
                cache_dir=cache_dir,
                token=token,
            )
        )
        source = str(path_or_repo_id)
    info, layout, normalization = load_zoo_meta(root)
    if root is path:
        # A streamed split is read piecewise: hashing every shard first would read it all, so only presence is checked.
        _verify_shards(root, info, hashes=not streaming)
        # Absolute shard paths for local folders: datasets 5.2 keys the cache of `load_dataset(folder)` on the folder
        # *name* and the card's patterns only, so two folders named alike (or a folder converted again with
        # `overwrite=True`) would silently share one stale Arrow cache. Explicit files are keyed on path and mtime.
        data_files = {
            split: [str((root / file).resolve()) for file in info.splits[split].files]
            for split in info.nonempty_splits
        }
        try:
            splits = datasets.load_dataset(str(root), data_files=data_files, cache_dir=cache_dir, streaming=streaming)
        except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException) as err:
            raise ValueError(f"{_unreadable_shard(root, info)}: {err.__cause__ or err}") from None
    else:
        splits = datasets.load_dataset(
            source, revision=revision, cache_dir=cache_dir, token=token, streaming=streaming
        )
        # A format version 1 dataset's card names the validation split `val`: it loads as `validation`.
        splits = {OLD_SPLIT_NAMES.get(name, name): split for name, split in splits.items()}
    expected = info.nonempty_splits
    if streaming:
        if sorted(splits) != sorted(expected):
            raise ValueError(f"{source}: streamed splits {sorted(splits)}, but {INFO_PATH} describes {expected}.")
        splits = datasets.IterableDatasetDict({split: splits[split].with_format("torch") for split in expected})
        return SaneZooDataset(splits=splits, layout=layout, normalization=normalization, info=info, root=root)
    if sorted(splits) != sorted(expected):
        raise ValueError(f"{source}: loaded splits {sorted(splits)}, but {INFO_PATH} describes {expected}.")
    for split in expected:
        if splits[split].num_rows != info.splits[split].num_checkpoints:
            raise ValueError(
                f"{source}: the {split} split has {splits[split].num_rows} rows, {INFO_PATH} says "
                f"{info.splits[split].num_checkpoints}."
            )
    splits = datasets.DatasetDict({split: splits[split] for split in expected}).with_format("torch")
    return SaneZooDataset(splits=splits, layout=layout, normalization=normalization, info=info, root=root)
