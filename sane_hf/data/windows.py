"""Windows of consecutive tokens, batched straight from the Arrow data of a tokenized zoo (docs/zoo_dataset_format.md, docs/method.md#windows-and-halos).

SANE is pretrained on random windows of `W` consecutive tokens of a checkpoint, with their global positions and
mask. The original materialized `[P+1, S, T]` per sample and drew one window start per sample with Python `random`
(docs/zoo_dataset_format.md step 4). Here:

* `sample_windows` cuts one window per sample out of a `[B, S, T]` batch (one advanced-indexing gather on
  accelerators; contiguous per-sample copies on CPU, see below), with starts drawn from a `torch.Generator`
  (reproducible);
* `WindowDataLoader` reads only the window rows of each checkpoint from the memory-mapped Arrow table (zero-copy
  views, one copy per batch); with a `permuter`, also the whole layers the window overlaps (`full_tokens` +
  `source_start`: what a permuted view gathers from, `TokenPermuter.required_token_range`); or, with
  `full_tokens=True`, the full checkpoints (62 MB per ResNet-18: 2 GB for a batch of 32);
* `read_windows` does those reads for given rows and a generator: what `pretrain`'s `train_step` uses, drawing the
  starts exactly as `sample_windows` does, so both give the same windows;
* `ZooCheckpointDataset` + `WindowCollator` give the same batches through a plain `torch.utils.data.DataLoader`
  (for `accelerate.prepare`);
* `StreamingWindowLoader` batches windows out of a streamed split (`load_zoo_dataset(..., streaming=True)`, a zoo
  larger than the disk), through a shuffle buffer, and saves and restores its position;
* pretraining's batches: `row_loaders` (row numbers of a downloaded split, in an order that depends on `(seed,
  epoch)` only) and `streamed_loaders` (full checkpoints of each process's part of a streamed split), which
  `cut_windows` turns into the step's windows with the step's generator (`sane_hf/training/loop.py` holds the
  loop only).

The loaders live in `window_loaders.py`; this module cuts the windows and holds the token store they share.

A window longer than the sequence (`W >= S`) is the whole sequence (start 0, length `S`).

Why per-sample copies on CPU: a window is `W` consecutive tokens, i.e. one contiguous block of memory, so a batch
is `B` memcpys. On the project's shared 2-core machines both slice copies and numpy fancy indexing were much
faster than torch's advanced indexing, which starts intra-op threads even for a small batch (BENCHMARKS.md, "Zoo
conversion and window loading", `benchmarks/bench_data.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..tokenization import TokenLayout


logger = logging.getLogger(__name__)

TOKENS_COLUMN = "tokens"
# Columns that identify a row rather than describe a property.
ID_COLUMNS = ("model_id", "epoch")


# CPU windows by per-sample slice copies instead of one gather (module docstring); tests switch it off to check
# that both paths agree.
_CPU_SLICE_COPIES = True


def _draw_starts(batch_size: int, num_tokens: int, window: int, generator: torch.Generator | None) -> torch.Tensor:
    """Window starts, uniform over `0..S-W` and independent per sample (drawn on the generator's device)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, num_tokens - window + 1, (batch_size,), generator=generator, device=device)


def sample_windows(
    tokens: torch.Tensor,
    window_size: int,
    generator: torch.Generator | None = None,
    *,
    positions: torch.Tensor,
    mask: torch.Tensor,
    starts: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Cut one random window of `window_size` consecutive tokens out of every sequence of a batch.

    Args:
        tokens (`torch.Tensor`): `[B, S, T]` full token sequences.
        window_size (`int`): `W`; `W >= S` gives the whole sequence.
        generator (`torch.Generator`, *optional*): source of the window starts (mainly used for testing purposes
            and reproducible runs).
        positions (`torch.Tensor`): `[S, 3]` (shared by the batch, e.g. `layout.positions`) or `[B, S, 3]`.
        mask (`torch.Tensor`): `[S, T]` or `[B, S, T]`.
        starts (`torch.Tensor`, *optional*): `[B]` window starts to use instead of drawing them.

    Returns:
        `dict` with `tokens [B, W, T]`, `positions [B, W, 3]` (global positions), `mask [B, W, T]` and
        `start [B]` (long).

    Example:

    ```python
    >>> g = torch.Generator().manual_seed(0)
    >>> out = sample_windows(tokens, 64, g, positions=layout.positions, mask=layout.mask)
    >>> out["tokens"].shape
    torch.Size([32, 64, 288])
    ```
    """
    if tokens.ndim != 3:
        raise ValueError(f"`tokens` must be [B, S, T], got shape {list(tokens.shape)}.")
    if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
        raise ValueError(f"`window_size` must be a positive int, got {window_size!r}.")
    B, S, T = tokens.shape
    if tuple(positions.shape[-2:]) != (S, 3) or tuple(mask.shape[-2:]) != (S, T):
        raise ValueError(
            f"`positions` must be [S, 3] and `mask` [S, T] (optionally with a batch dim) for tokens "
            f"{list(tokens.shape)}; got {list(positions.shape)} and {list(mask.shape)}."
        )
    W = min(window_size, S)
    if starts is None:
        starts = _draw_starts(B, S, W, generator)
    starts = starts.to(device=tokens.device, dtype=torch.long)
    if starts.shape != (B,) or (B and (int(starts.min()) < 0 or int(starts.max()) > S - W)):
        raise ValueError(
            f"`starts` must be [B] with values in [0, {S - W}] (a window of {W} tokens inside a sequence of {S}), "
            f"got {starts.tolist()}."
        )
    # Windows are drawn per sample, not per batch.
    if tokens.device.type == "cpu" and _CPU_SLICE_COPIES:
        # One contiguous block per sample (see the module docstring for why this beats a gather on CPU).
        spans = [slice(start, start + W) for start in starts.tolist()]
        return {
            "tokens": _stack_slices(tokens, spans, per_sample=True),
            "positions": _stack_slices(positions, spans, per_sample=positions.ndim == 3),
            "mask": _stack_slices(mask, spans, per_sample=mask.ndim == 3),
            "start": starts,
        }
    index = starts[:, None] + torch.arange(W, device=tokens.device)  # [B, W]
    rows = torch.arange(B, device=tokens.device)[:, None]
    # One advanced-indexing gather per tensor: one kernel each on an accelerator.
    return {
        "tokens": tokens[rows, index],
        "positions": positions[index] if positions.ndim == 2 else positions[rows, index],
        "mask": mask[index] if mask.ndim == 2 else mask[rows, index],
        "start": starts,
    }


def _stack_slices(source: torch.Tensor, spans: list[slice], per_sample: bool) -> torch.Tensor:
    """`[B, W, ...]` from one slice per sample of `source` (`[B, S, ...]`, or a shared `[S, ...]`)."""
    width = spans[0].stop - spans[0].start if spans else 0
    out = torch.empty((len(spans), width, *source.shape[2 if per_sample else 1 :]), dtype=source.dtype)
    for b, span in enumerate(spans):
        out[b] = source[b, span] if per_sample else source[span]
    return out


# -------------------------------------------------------------------------------------------------------------------
# Zero-copy access to the token column of a `datasets.Dataset`
# -------------------------------------------------------------------------------------------------------------------


def _flat_dataset(dataset):
    """`dataset` without an indices mapping (after `shuffle`/`select`), so rows are physical Arrow rows."""
    if getattr(dataset, "_indices", None) is not None:
        logger.info("Flattening the indices mapping of the dataset (one copy) for zero-copy window reads.")
        # Under torch formatting, datasets 5.2's flatten_indices re-infers Array2D as nested lists; arrow keeps it.
        dataset = dataset.with_format("arrow").flatten_indices()
    return dataset


def token_chunk_array(chunk, column: str, num_tokens: int, token_size: int) -> np.ndarray:
    """`[rows, S, T]` numpy view (no copy) of one Arrow chunk of an `Array2D [S, T]` token column."""
    import pyarrow as pa

    storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    if storage.null_count:
        raise ValueError(f"Column {column!r} has null rows; every checkpoint needs tokens.")
    values = storage.flatten().flatten()  # respects the slice offsets of the chunk
    expected = len(chunk) * num_tokens * token_size
    if len(values) != expected or values.null_count:
        raise ValueError(
            f"Column {column!r} is not a dense [{num_tokens}, {token_size}] array per row "
            f"({len(values)} values for {len(chunk)} rows)."
        )
    return values.to_numpy(zero_copy_only=True).reshape(len(chunk), num_tokens, token_size)


class ArrowTokenStore:
    """Read-only views of the `tokens` column (`Array2D [S, T]`) of a `datasets.Dataset`, and batched copies.

    The Arrow data of a loaded dataset is memory-mapped; each record batch becomes a `[rows, S, T]` numpy view
    without a copy, so a window is one contiguous slice and a batch of windows is `B` memcpys into one new tensor.

    Args:
        dataset (`datasets.Dataset`): one split of a tokenized zoo (any format).
        column (`str`, *optional*, defaults to `"tokens"`).
    """

    def __init__(self, dataset, column: str = TOKENS_COLUMN) -> None:
        dataset = _flat_dataset(dataset)
        feature = dataset.features.get(column)
        shape = getattr(feature, "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"Column {column!r} must be an Array2D feature [S, T], found {feature!r}.")
        self.num_tokens, self.token_size = int(shape[0]), int(shape[1])
        self.num_rows = len(dataset)
        self.chunks: list[np.ndarray] = []
        chunk_of_row, local_row = [], []
        for chunk in dataset.data.table.column(column).chunks:
            if len(chunk) == 0:
                continue
            array = token_chunk_array(chunk, column, self.num_tokens, self.token_size)
            chunk_of_row.append(np.full(len(chunk), len(self.chunks), dtype=np.int64))
            local_row.append(np.arange(len(chunk), dtype=np.int64))
            self.chunks.append(array)
        self._chunk_of_row = np.concatenate(chunk_of_row) if chunk_of_row else np.zeros(0, dtype=np.int64)
        self._local_row = np.concatenate(local_row) if local_row else np.zeros(0, dtype=np.int64)
        if len(self._chunk_of_row) != self.num_rows:
            raise ValueError(f"Column {column!r} has {len(self._chunk_of_row)} rows, the dataset {self.num_rows}.")
        self.dtype = self.chunks[0].dtype if self.chunks else np.dtype(np.float32)

    def _copy(self, rows: torch.Tensor | Sequence[int], starts: Sequence[int] | None, width: int) -> torch.Tensor:
        rows = np.asarray(torch.as_tensor(rows, dtype=torch.long), dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"Row index out of range for a split of {self.num_rows} checkpoints.")
        out = np.empty((len(rows), width, self.token_size), dtype=self.dtype)
        chunks, locals_ = self._chunk_of_row[rows], self._local_row[rows]
        for b in range(len(rows)):
            start = 0 if starts is None else starts[b]
            out[b] = self.chunks[chunks[b]][locals_[b], start : start + width]
        return torch.from_numpy(out)

    def rows(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Full token sequences `[B, S, T]` (a copy) of the given rows."""
        return self._copy(rows, None, self.num_tokens)

    def windows(self, rows: torch.Tensor | Sequence[int], starts: torch.Tensor, window: int) -> torch.Tensor:
        """Token windows `[B, W, T]` (a copy): row `rows[b]`, tokens `starts[b] .. starts[b] + W - 1`."""
        starts = torch.as_tensor(starts, dtype=torch.long).tolist()
        if any(s < 0 or s + window > self.num_tokens for s in starts):
            raise IndexError(f"A window [start, start + {window}) leaves the {self.num_tokens} tokens: {starts}.")
        return self._copy(rows, starts, window)


def read_windows(
    store: ArrowTokenStore,
    layout: TokenLayout,
    rows: torch.Tensor | Sequence[int],
    window_size: int,
    generator: torch.Generator | None = None,
    *,
    starts: torch.Tensor | None = None,
    permuter: Any | None = None,
) -> dict[str, torch.Tensor]:
    """One random window per row, read straight from the token store: what `sample_windows` cuts out of full rows.

    The starts are drawn exactly as `sample_windows` draws them (one `torch.randint` on `generator`), so for the
    same generator state both give the same windows; only the window rows are copied (and, with a `permuter`, the
    whole layers the window overlaps, which a permuted view gathers from).

    Args:
        store (`ArrowTokenStore`): the split's tokens.
        layout (`TokenLayout`): the zoo's layout (positions and mask).
        rows (`torch.Tensor` or `Sequence[int]`): `[B]` rows of the split.
        window_size (`int`): `W` (`W >= S` gives whole sequences).
        generator (`torch.Generator`, *optional*): source of the window starts.
        starts (`torch.Tensor`, *optional*): `[B]` window starts to use instead of drawing them.
        permuter (`TokenPermuter`, *optional*): also return `full_tokens [B, R, T]` starting at token
            `source_start [B]`: the widest `required_token_range` of the batch.

    Returns:
        `dict` with `tokens [B, W, T]`, `positions [B, W, 3]`, `mask [B, W, T]`, `start [B]` (on the CPU), and
        `full_tokens` + `source_start` with a `permuter`.
    """
    rows = torch.as_tensor(rows, dtype=torch.long).cpu()
    S = layout.num_tokens
    W = min(window_size, S)
    if starts is None:
        starts = _draw_starts(len(rows), S, W, generator)
    starts = starts.to(device="cpu", dtype=torch.long)
    index = starts.numpy()[:, None] + np.arange(W)
    out = {
        "tokens": store.windows(rows, starts, W),
        # numpy fancy indexing: single-threaded and much faster than torch's here (module docstring).
        "positions": torch.from_numpy(layout.positions.numpy()[index]),
        "mask": torch.from_numpy(layout.mask.numpy()[index]),
        "start": starts,
    }
    if permuter is not None:
        # Only the layers the windows overlap: one contiguous range per sample, of the batch's widest length
        # (shifted left at the end of the sequence), instead of whole checkpoints.
        ranges = permuter.required_token_range(starts, W)
        width = int((ranges[:, 1] - ranges[:, 0]).max())
        source_start = ranges[:, 0].clamp(max=S - width)
        out["full_tokens"] = store.windows(rows, source_start, width)
        out["source_start"] = source_start
    return out


def batch_rows(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensor whose first dimension is a pretraining batch's: `full_tokens` or `rows`."""
    if "full_tokens" in batch:
        return batch["full_tokens"]
    if "rows" in batch:
        return batch["rows"]
    raise ValueError(f"A pretraining batch needs `rows` or `full_tokens`, got keys {sorted(batch)}.")


def cut_windows(
    batch: Mapping[str, torch.Tensor],
    window_size: int,
    layout: TokenLayout,
    generator: torch.Generator,
    permuter: Any | None,
    store: ArrowTokenStore | None,
) -> dict[str, torch.Tensor]:
    """One random window per sample of a pretraining batch (plus what a permuted view reads), on the batch's device.

    `{"rows": [B]}` batches (`row_loaders`) are read from `store` (`read_windows`), `{"full_tokens": [B, S, T]}`
    batches (`StreamedBatches`, or any loader of full checkpoints) are cut (`sample_windows`, keeping `full_tokens`
    for the permuted view); for the same generator both give the same windows.
    """
    device = batch_rows(batch).device
    if "full_tokens" in batch:
        windows = sample_windows(
            batch["full_tokens"],
            window_size,
            generator,
            positions=layout.positions.to(device),
            mask=layout.mask.to(device),
        )
        windows["full_tokens"] = batch["full_tokens"]
        return windows
    if store is None:
        raise ValueError("A batch of `rows` needs the split's token `store` to read the windows from.")
    windows = read_windows(store, layout, batch["rows"], window_size, generator, permuter=permuter)
    return {key: value.to(device) for key, value in windows.items()}
