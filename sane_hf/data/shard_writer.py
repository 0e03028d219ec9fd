"""The parquet shards of a converted zoo: rows of one split cut into shards of bounded size, encoded and written by one
background thread while the next shard fills (docs/zoo_dataset_format.md#the-tokenized-dataset)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .info import (
    DATA_PATH_TEMPLATE,
)
from .windows import TOKENS_COLUMN
from .zoo import CheckpointRecord


def dataset_features(num_tokens: int, token_size: int, properties: Mapping[str, str]):
    """The `datasets.Features` of a converted zoo's rows: ids, the `[S, T]` tokens and one column per property."""
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


class BackgroundWriter:
    """Parquet shards written by one background thread, into float32 shard buffers that it lends out.

    Encoding a shard is the largest cost of a conversion (nested-list levels, byte-stream-split, zstd and the disk
    write, all single-threaded in Arrow, which releases the GIL meanwhile; BENCHMARKS.md, "ResNet-18 at full size",
    has the measurements), so it runs while the main thread reads, tokenizes and normalizes the next shard. One
    write at a time: at most two shard buffers exist (the one being written and the one being filled), reused across
    shards and splits, so a shard costs no fresh page faults. Two concurrent writes were somewhat faster on 2 cores
    but raised the peak memory (Arrow's buffers per write) and the CPU time.
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
        return torch.empty(shape, dtype=torch.float32)

    def submit(self, buffer: torch.Tensor, table, path: Path, **options: Any) -> None:
        """Write `table` (whose tokens are a view of `buffer`) to `path` once the previous write is done."""
        import pyarrow.parquet as pq

        self.wait()
        if self._executor is None:
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


class ShardWriter:
    """Rows of one split -> parquet shards of at most `max_bytes` token bytes.

    The tokens of a shard are written straight into a reused float32 buffer (`add`'s `write`) and handed to Arrow
    without a copy: no list of rows and no `np.stack` of the shard (for a ResNet-18 row, the copy and page faults
    of a fresh 62 MB array; benchmarks/bench_scale.py). `writes` encodes the full shards in the background:
    at most two shards are in memory (one being filled, one being written).
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        features,
        properties: Mapping[str, str],
        max_bytes: int,
        writes: BackgroundWriter,
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
