"""The loaders of token windows (docs/method.md#windows-and-halos), all on the cutting of `windows.py`: batches of
random windows from a downloaded split (`WindowDataLoader`, or `ZooCheckpointDataset` + `WindowCollator` through a
plain `DataLoader`), from a streamed split (`StreamingWindowLoader`), and pretraining's batches (`row_loaders`,
`streamed_loaders`, whose windows `cut_windows` cuts per step)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..tokenization import TokenLayout
from .windows import ID_COLUMNS, TOKENS_COLUMN, ArrowTokenStore, _flat_dataset, read_windows, sample_windows


def _read_columns(dataset, columns: Sequence[str]) -> dict[str, Any]:
    """Small columns as tensors (numeric/bool) or lists (strings), read once from the Arrow table."""
    import pyarrow as pa

    table = _flat_dataset(dataset).data.table
    values: dict[str, Any] = {}
    for name in columns:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values[name] = column.to_pylist()
        else:
            array = np.asarray(column.to_numpy())
            values[name] = torch.from_numpy(array.copy()) if array.dtype != object else column.to_pylist()
    return values


def _property_columns(dataset, property_columns: Sequence[str] | None) -> list[str]:
    names = [n for n in dataset.column_names if n != TOKENS_COLUMN and n not in ID_COLUMNS]
    if property_columns is None:
        return names
    unknown = [n for n in property_columns if n not in dataset.column_names]
    if unknown:
        raise ValueError(f"Unknown property column(s) {unknown}; the split has {names}.")
    return list(property_columns)


def _select(values: Any, rows: torch.Tensor) -> Any:
    return values[rows] if isinstance(values, torch.Tensor) else [values[i] for i in rows.tolist()]


class WindowDataLoader:
    """Batches of random token windows from one split of a tokenized zoo (the pretraining input, SANE §4.1).

    Each epoch visits every checkpoint once (shuffled with `generator` if `shuffle`), in batches of `batch_size`;
    every sample gets its own window start.

    Args:
        dataset (`datasets.Dataset`): one split (e.g. `load_zoo_dataset(...).splits["train"]`).
        layout (`TokenLayout`): the zoo's layout (positions and mask).
        window_size (`int`): `W` (`W >= S` gives whole sequences).
        batch_size (`int`): checkpoints per batch.
        shuffle (`bool`, *optional*, defaults to `True`): reshuffle the checkpoints every epoch.
        drop_last (`bool`, *optional*, defaults to `True`): drop the last incomplete batch.
        generator (`torch.Generator`, *optional*): the source of all randomness (order and window starts); a
            fresh generator seeded with `seed` if not given.
        seed (`int`, *optional*, defaults to 0): seed of the default generator.
        full_tokens (`bool`, *optional*, defaults to `False`): also return `full_tokens [B, S, T]` (costs reading
            whole checkpoints; permutation augmentation needs rows outside the window).
        permuter (`TokenPermuter`, *optional*): also return the token range every permuted window reads from:
            `full_tokens [B, R, T]` starting at token `source_start [B]`, where `R` is the widest
            `required_token_range` of the batch (the whole layers a window overlaps). `make_two_views` and
            `TokenPermuter.apply` take the pair in place of full checkpoints. Ignored with `full_tokens=True`.
        property_columns (`Sequence[str]`, *optional*): property columns to return (default: all).

    Yields:
        `dict` with `tokens [B, W, T]` float, `positions [B, W, 3]` long, `mask [B, W, T]` bool, `start [B]`,
        `index [B]` (row in the split), `model_id` (list of str), `epoch [B]`, `properties` (`{name: [B] tensor or
        list}`), and `full_tokens [B, S, T]` if requested (or `full_tokens [B, R, T]` + `source_start [B]` with a
        `permuter`).

    Example:

    ```python
    >>> zoo = load_zoo_dataset("runs/zoo_ds")
    >>> loader = WindowDataLoader(zoo.splits["train"], zoo.layout, window_size=64, batch_size=32, seed=0)
    >>> batch = next(iter(loader))
    >>> batch["tokens"].shape, batch["positions"].shape
    (torch.Size([32, 64, 64]), torch.Size([32, 64, 3]))
    ```
    """

    def __init__(
        self,
        dataset,
        layout: TokenLayout,
        window_size: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        generator: torch.Generator | None = None,
        seed: int = 0,
        full_tokens: bool = False,
        permuter: Any | None = None,
        property_columns: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
            raise ValueError(f"`window_size` must be a positive int, got {window_size!r}.")
        dataset = _flat_dataset(dataset)
        self.store = ArrowTokenStore(dataset)
        if (self.store.num_tokens, self.store.token_size) != (layout.num_tokens, layout.token_size):
            raise ValueError(
                f"The split's tokens are [{self.store.num_tokens}, {self.store.token_size}], the layout's "
                f"[{layout.num_tokens}, {layout.token_size}]."
            )
        self.layout = layout
        self.window_size = window_size
        self.window = min(window_size, layout.num_tokens)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.full_tokens = full_tokens
        if permuter is not None and permuter.layout.num_tokens != layout.num_tokens:
            raise ValueError(
                f"`permuter` is for {permuter.layout.num_tokens} tokens per checkpoint, the split has "
                f"{layout.num_tokens}."
            )
        self.permuter = permuter
        self.property_names = _property_columns(dataset, property_columns)
        ids = [c for c in ID_COLUMNS if c in dataset.column_names]
        self._columns = _read_columns(dataset, ids + self.property_names)
        self._positions = layout.positions
        self._mask = layout.mask

    @property
    def num_rows(self) -> int:
        return self.store.num_rows

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return math.ceil(self.num_rows / self.batch_size)

    def batch(self, rows: torch.Tensor | Sequence[int], starts: torch.Tensor | None = None) -> dict[str, Any]:
        """The batch of the given split rows (window starts drawn from the generator unless given)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.full_tokens:
            full = self.store.rows(rows)
            out = sample_windows(
                full, self.window, self.generator, positions=self._positions, mask=self._mask, starts=starts
            )
            out["full_tokens"] = full
        else:
            out = read_windows(
                self.store, self.layout, rows, self.window, self.generator, starts=starts, permuter=self.permuter
            )
        out["index"] = rows
        for name in ID_COLUMNS:
            if name in self._columns:
                out[name] = _select(self._columns[name], rows)
        out["properties"] = {name: _select(self._columns[name], rows) for name in self.property_names}
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = self.num_rows
        if len(self) == 0:
            # Without this, `next(iter(loader))` on a small split fails with a bare StopIteration.
            raise ValueError(
                f"The split has {n} checkpoint(s), fewer than batch_size={self.batch_size}, so with drop_last=True "
                "it yields no batch; lower batch_size or pass drop_last=False."
                if n
                else "The split is empty: it yields no batch."
            )
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size : (i + 1) * self.batch_size])


class ZooCheckpointDataset(torch.utils.data.Dataset):
    """Map-style dataset of full checkpoints of one split (`tokens [S, T]` + ids + properties).

    Use it with `WindowCollator` in a plain `torch.utils.data.DataLoader` (e.g. one that `accelerate` prepares);
    `WindowDataLoader` is the faster path when only windows are needed.

    Args:
        dataset (`datasets.Dataset`): one split of a tokenized zoo.
        property_columns (`Sequence[str]`, *optional*): property columns to return (default: all).
    """

    def __init__(self, dataset, property_columns: Sequence[str] | None = None) -> None:
        dataset = _flat_dataset(dataset)
        self.store = ArrowTokenStore(dataset)
        self.property_names = _property_columns(dataset, property_columns)
        ids = [c for c in ID_COLUMNS if c in dataset.column_names]
        self._columns = _read_columns(dataset, ids + self.property_names)

    def __len__(self) -> int:
        return self.store.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Index {index} out of range for {len(self)} checkpoints.")
        index = index % len(self)
        row = torch.tensor([index])
        item: dict[str, Any] = {"tokens": self.store.rows(row)[0], "index": index}
        for name in ID_COLUMNS:
            if name in self._columns:
                item[name] = _select(self._columns[name], row)[0]
        item["properties"] = {name: _select(self._columns[name], row)[0] for name in self.property_names}
        return item


class WindowCollator:
    """`collate_fn` turning `ZooCheckpointDataset` items into a window batch (same keys as `WindowDataLoader`).

    Args:
        layout (`TokenLayout`): the zoo's layout.
        window_size (`int`): `W`.
        generator (`torch.Generator`, *optional*): source of the window starts.
        full_tokens (`bool`, *optional*, defaults to `False`): keep `full_tokens [B, S, T]` in the batch.
    """

    def __init__(
        self,
        layout: TokenLayout,
        window_size: int,
        generator: torch.Generator | None = None,
        full_tokens: bool = False,
    ) -> None:
        self.layout = layout
        self.window_size = window_size
        self.generator = generator
        self.full_tokens = full_tokens

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        full = torch.stack([item["tokens"] for item in items])
        out = sample_windows(
            full, self.window_size, self.generator, positions=self.layout.positions, mask=self.layout.mask
        )
        if self.full_tokens:
            out["full_tokens"] = full
        out["index"] = torch.tensor([item["index"] for item in items])
        for name in ID_COLUMNS:
            if name in items[0]:
                values = [item[name] for item in items]
                out[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        out["properties"] = {}
        for name in items[0]["properties"]:
            values = [item["properties"][name] for item in items]
            out["properties"][name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        return out


class StreamingWindowLoader:
    """Batches of random token windows from a streamed split (`load_zoo_dataset(..., streaming=True)`).

    The checkpoints arrive in shard order through a shuffle buffer of `shuffle_buffer` rows (datasets'
    `IterableDataset.shuffle`: each shard visit and each buffer draw seeded from `seed`), are grouped into batches
    of `batch_size` and cut into one random window each, exactly as `WindowCollator` cuts them. `state_dict()`
    records where the stream stands after the last batch handed out (datasets' stream position and the window
    generator); `load_state_dict` on a new loader continues from there: with the very batches an uninterrupted loader
    would yield when `shuffle_buffer=0`; with a shuffle buffer, datasets refills the buffer on resume, so the rows
    that sat in it at the checkpoint are skipped in that pass.

    Args:
        dataset (`datasets.IterableDataset`): one streamed split in torch format.
        layout (`TokenLayout`): the zoo's layout (positions and mask).
        window_size (`int`): `W` (`W >= S` gives whole sequences).
        batch_size (`int`): checkpoints per batch.
        shuffle_buffer (`int`, *optional*, defaults to 256): rows in the shuffle buffer; 0 keeps the stream order.
        seed (`int`, *optional*, defaults to 0): seed of the shuffle and of the window starts.
        full_tokens (`bool`, *optional*, defaults to `False`): also return `full_tokens [B, S, T]`.

    Yields:
        `dict` with the keys of `WindowCollator` batches: `tokens [B, W, T]`, `positions [B, W, 3]`,
        `mask [B, W, T]`, `start [B]`, `model_id`, `epoch [B]`, `properties`, `index [B]` (the row's place in this
        loader's stream), and `full_tokens` if requested. A last incomplete batch is dropped (NT-Xent compares full
        batches); a stream without one full batch raises a `ValueError`.

    Example:

    ```python
    >>> zoo = load_zoo_dataset("org/sane-zoo-cnn-digits", streaming=True)
    >>> loader = StreamingWindowLoader(zoo.splits["train"], zoo.layout, window_size=64, batch_size=32)
    >>> batch = next(iter(loader))
    >>> state = loader.state_dict()              # save with the training checkpoint; later:
    >>> resumed = StreamingWindowLoader(zoo.splits["train"], zoo.layout, window_size=64, batch_size=32)
    >>> resumed.load_state_dict(state)           # continues with the batch after `batch`
    ```
    """

    def __init__(
        self,
        dataset,
        layout: TokenLayout,
        window_size: int,
        batch_size: int,
        *,
        shuffle_buffer: int = 256,
        seed: int = 0,
        full_tokens: bool = False,
    ) -> None:
        for name, value, minimum in (("batch_size", batch_size, 1), ("shuffle_buffer", shuffle_buffer, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
        import datasets

        if not isinstance(dataset, datasets.IterableDataset):
            raise ValueError(
                f"StreamingWindowLoader takes a streamed split (datasets.IterableDataset, from "
                f"load_zoo_dataset(..., streaming=True)), got {type(dataset).__name__}; use WindowDataLoader."
            )
        self.dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else dataset
        self.collate = WindowCollator(layout, window_size, torch.Generator().manual_seed(seed), full_tokens)
        self.batch_size = batch_size
        self._rows_seen = 0
        self._state: dict[str, Any] | None = None

    def _current_state(self) -> dict[str, Any]:
        # JSON-safe (the generator state as a list of byte values), so a training checkpoint stores it as JSON.
        return {
            "dataset": self.dataset.state_dict(),
            "generator": self.collate.generator.get_state().tolist(),
            "rows": self._rows_seen,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands after the last batch handed out (start of the stream before the first); plain
        JSON types only."""
        if self._state is None:
            return self._current_state()
        return self._state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict` of a loader over the same split with the same arguments."""
        self.dataset.load_state_dict(state["dataset"])
        self.collate.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
        self._rows_seen = int(state["rows"])
        self._state = dict(state)

    def set_epoch(self, epoch: int) -> None:
        """Start pass `epoch` over the stream: the shuffle of each pass is seeded from `(seed, epoch)`; a
        `load_state_dict` position applies to the pass it was saved in only (datasets' `IterableDataset.set_epoch`)."""
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        yielded = False
        for row in self.dataset:
            properties = {k: v for k, v in row.items() if k not in (TOKENS_COLUMN, *ID_COLUMNS)}
            items.append({TOKENS_COLUMN: row[TOKENS_COLUMN], "index": self._rows_seen, "properties": properties,
                          **{name: row[name] for name in ID_COLUMNS if name in row}})  # fmt: skip
            self._rows_seen += 1
            if len(items) == self.batch_size:
                batch = self.collate(items)
                items = []
                # Recorded before handing the batch out: a checkpoint saved after training on it resumes after it.
                self._state = self._current_state()
                yielded = True
                yield batch
        if not yielded and self._rows_seen < self.batch_size:
            raise ValueError(
                f"The streamed split yields {self._rows_seen} checkpoint(s), fewer than batch_size={self.batch_size}: "
                "no full batch (NT-Xent compares full batches); lower batch_size."
            )


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order that depends only on `(seed, epoch)`: identical on every process and after a resume."""

    def __init__(self, num_items: int, seed: int):
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())


class RepeatedRows(torch.utils.data.Dataset):
    """The row numbers of a split, each `repeats` times per epoch (upstream "supersample": several windows per
    checkpoint).

    Items are row numbers only: `cut_windows` reads each window, and the layers a permuted view gathers from, out of
    the memory-mapped `store` (`read_windows`), so a batch never holds whole checkpoints (62 MB each for a
    ResNet-18; docs/method.md#windows-and-halos).
    """

    def __init__(self, store: ArrowTokenStore, repeats: int):
        self.store = store
        self.repeats = repeats

    def __len__(self) -> int:
        return self.store.num_rows * self.repeats

    def __getitem__(self, index: int) -> int:
        return index % self.store.num_rows


def collate_rows(items: list[int]) -> dict[str, torch.Tensor]:
    """`{"rows": [B]}`: a batch of `RepeatedRows` items."""
    return {"rows": torch.tensor(items, dtype=torch.long)}


def token_store(loader: torch.utils.data.DataLoader | None) -> ArrowTokenStore | None:
    """The token store a loader of `row_loaders` reads windows from (`None` for loaders of full tokens)."""
    return getattr(getattr(loader, "dataset", None), "store", None)


def row_loaders(
    train, validation, batch_size: int, windows_per_checkpoint: int, seed: int
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """Train/validation loaders of row numbers (`{"rows": [B]}`) of in-memory splits; `cut_windows` reads the windows
    of a batch from `token_store(loader)`.

    An epoch visits every train row `windows_per_checkpoint` times in an order that depends on `(seed, epoch)` only
    (`EpochSampler`); only full batches (NT-Xent compares full batches, docs/method.md#windows-and-halos). The
    validation rows come in their order, in batches of `min(batch_size, rows)`; `validation` may be `None`.
    """
    train_set = RepeatedRows(ArrowTokenStore(train), windows_per_checkpoint)
    if len(train_set) < batch_size:
        raise ValueError(
            f"The train split has {len(train_set)} windows per epoch, fewer than batch_size={batch_size} "
            "(NT-Xent needs full batches; lower batch_size or raise windows_per_checkpoint)."
        )
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochSampler(len(train_set), seed),
        drop_last=True,
        collate_fn=collate_rows,
        # Own generators: a DataLoader without one draws a seed from the global RNG at every `iter()`, and a run
        # resumed mid-epoch calls `iter()` once more than an uninterrupted one, which would shift dropout masks.
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = None
    if validation is not None and len(validation) > 0:
        val_set = RepeatedRows(ArrowTokenStore(validation), 1)
        val_loader = torch.utils.data.DataLoader(
            val_set,
            batch_size=min(batch_size, len(val_set)),
            shuffle=False,
            drop_last=True,
            collate_fn=collate_rows,
            generator=torch.Generator().manual_seed(seed),
        )
    return train_loader, val_loader


class StreamedBatches:
    """Batches of full checkpoints (`{"full_tokens": [B, S, T]}` on `device`) from one process's part of a streamed
    split; `cut_windows` cuts the step's windows out of them, as out of any `full_tokens` batch.

    A pass yields `num_batches` batches (`None`: until the stream ends): the same count on every process, so that
    distributed ranks step together. `set_epoch`, `state_dict` and `load_state_dict` are the `StreamingWindowLoader`'s.
    """

    def __init__(self, loader: StreamingWindowLoader, num_batches: int | None, device: torch.device, split: str):
        self.loader = loader
        self.num_batches = num_batches
        self.device = device
        self.split = split

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, done: int) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of a pass of which `done` batches were taken (the loader's position is after them)."""
        iterator = iter(self.loader)
        remaining = None if self.num_batches is None else self.num_batches - done
        taken = 0
        while remaining is None or taken < remaining:
            batch = next(iterator, None)
            if batch is None:
                if remaining is None:
                    return
                raise ValueError(
                    f"This process's part of the streamed {self.split} split ended after {done + taken} batches; "
                    f"every process needs {self.num_batches} per pass (its shards hold fewer checkpoints than "
                    "meta/info.json gives per process): reconvert the zoo with a shard count the processes divide."
                )
            taken += 1
            yield {"full_tokens": batch["full_tokens"].to(self.device)}


def streamed_loaders(
    train,
    validation,
    layout: TokenLayout,
    *,
    train_rows: int,
    validation_rows: int,
    batch_size: int,
    batches_multiple_of: int = 1,
    shuffle_buffer: int,
    seed: int,
    process_index: int,
    num_processes: int,
    device: torch.device,
) -> tuple[StreamedBatches, StreamedBatches | None]:
    """Train/validation batches of full checkpoints from streamed splits (`load_zoo_dataset(..., streaming=True)`).

    Each process reads its own part of every split (datasets' `split_dataset_by_node`: whole shards when the
    processes divide the shard count, else every `num_processes`-th row); the train split goes through a shuffle
    buffer of `shuffle_buffer` rows, reshuffled every pass (`set_epoch`). A pass over the train split is one epoch of
    `(train_rows // num_processes) // batch_size` batches per process, rounded down to a multiple of
    `batches_multiple_of` (whole optimizer steps); `train_rows` / `validation_rows` are the split sizes
    meta/info.json records (a stream has no length). `validation` may be `None`.
    """
    from datasets.distributed import split_dataset_by_node

    per_process = train_rows // num_processes
    num_batches = per_process // batch_size // batches_multiple_of * batches_multiple_of
    if num_batches == 0:
        raise ValueError(
            f"The streamed train split has {train_rows} checkpoints, {per_process} per process over {num_processes} "
            f"process(es): fewer than batch_size={batch_size} x gradient_accumulation_steps={batches_multiple_of} "
            "(NT-Xent needs full batches); lower batch_size."
        )

    def part(split, rows_per_batch: int, buffer: int) -> StreamingWindowLoader:
        dataset = split_dataset_by_node(split, rank=process_index, world_size=num_processes)
        return StreamingWindowLoader(
            # Window size 1: the loader's own windows go unused (`cut_windows` cuts the step's from `full_tokens`).
            dataset,
            layout,
            1,
            rows_per_batch,
            shuffle_buffer=buffer,
            seed=seed,
            full_tokens=True,
        )

    train_batches = StreamedBatches(part(train, batch_size, shuffle_buffer), num_batches, device, "train")
    val_batches = None
    val_rows = validation_rows // num_processes if validation is not None else 0
    if val_rows > 0:
        val_batches = StreamedBatches(part(validation, min(batch_size, val_rows), 0), None, device, "validation")
    return train_batches, val_batches
