"""Embed every checkpoint of a tokenized zoo with a pretrained SANE (docs/method.md#probes).

Upstream encodes each whole token sequence in one full-attention pass and takes the mean over tokens (`[N, L]`).
Here the sequence goes through `SaneModel.embed` (haloed windows, docs/method.md#windows-and-halos, robust to every length; identical
to one full-attention pass when the sequence fits into one window), and one encoder pass yields every pooling:

* `"mean"`: the mean over all tokens, `[N, L]` (upstream's embedding);
* `"layers"`: the mean over each layer's tokens, flattened, `[N, num_layers * L]`;
* `"mean+layers"`: both, concatenated, `[N, (1 + num_layers) * L]` (a cheap way to keep where in the model a latent
  came from, which the global mean throws away);
* `"stats"`: the mean and the standard deviation over each layer's tokens, flattened, `[N, 2 * num_layers * L]`:
  the s(W) baseline's idea (per-layer statistics, SANE §5) applied to SANE's latents instead of the raw weights.
  A linear probe cannot compute a spread from means alone, and the spread of a layer's latents carries what the
  weight statistics carry (how far training has moved the layer);
* `"concat"`: every token latent, flattened, `[N, S * L]` (MZ-SANE's `aggregate_embeddings="flatten"`; only
  sensible for short sequences).

Tokens are read in batches straight from the memory-mapped Arrow split (`ArrowTokenStore`), so a zoo never has to fit
in memory, and the encoder runs without gradients, in float32 or under bf16 autocast (`precision`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..data.windows import TOKENS_COLUMN, ArrowTokenStore, token_chunk_array
from ..tokenization import TokenLayout, TokenPermuter
from ..utils.precision import precision_autocast, resolve_precision
from ..utils.processes import Processes


logger = logging.getLogger(__name__)

POOLINGS = ("mean", "layers", "mean+layers", "stats", "concat")
# Above this many features per checkpoint, "concat" logs a warning (the probe solves an n x n or F x F system).
_CONCAT_WARN_FEATURES = 50_000


def read_columns(split_dataset, names: Sequence[str], rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Small columns of a split as numpy arrays: numbers as float64 (null -> NaN), strings/bools as object arrays.

    Args:
        split_dataset (`datasets.Dataset`): one split of a tokenized zoo (any format, with or without indices).
        names (`Sequence[str]`): column names.
        rows (`Sequence[int]`, *optional*): only these rows, in this order.
    """
    missing = [n for n in names if n not in split_dataset.column_names]
    if missing:
        raise ValueError(f"Unknown column(s) {missing}; the split has {split_dataset.column_names}.")
    return _table_columns(split_dataset.select_columns(list(names)).with_format("arrow")[:], names, rows)


def _table_columns(table, names: Sequence[str], rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """`read_columns` of a `pyarrow.Table`."""
    import pyarrow as pa

    values = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            array = column.to_numpy().astype(np.float64) if column.null_count == 0 else None
            if array is None:
                array = np.array([np.nan if v is None else float(v) for v in column.to_pylist()], dtype=np.float64)
        else:
            array = np.array(column.to_pylist(), dtype=object)
        values[name] = array if rows is None else array[np.asarray(rows, dtype=np.int64)]
    return values


def iter_token_batches(
    split_dataset, batch_size: int = 256, rows: Sequence[int] | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Full token sequences `[b, S, T]` of a split, `batch_size` checkpoints at a time, from the Arrow data.

    Args:
        split_dataset (`datasets.Dataset`): one split of a tokenized zoo.
        batch_size (`int`, *optional*, defaults to 256): checkpoints per batch.
        rows (`Sequence[int]`, *optional*): only these rows, in this order (default: all).

    Yields:
        `(rows, tokens)`: the row indices of the batch and a float tensor of their tokens (a copy).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if _is_streamed(split_dataset):
        for batch_rows, tokens, _ in _iter_streamed_batches(split_dataset, batch_size, rows, ()):
            yield batch_rows, tokens
        return
    store = ArrowTokenStore(split_dataset)
    order = np.arange(store.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    for start in range(0, len(order), batch_size):
        batch_rows = order[start : start + batch_size]
        yield batch_rows, store.rows(torch.from_numpy(batch_rows)).float()


def _is_streamed(split_dataset) -> bool:
    import datasets

    return isinstance(split_dataset, datasets.IterableDataset)


def _iter_streamed_batches(
    split_dataset, batch_size: int, rows: Sequence[int] | None, columns: Sequence[str]
) -> Iterator[tuple[np.ndarray, torch.Tensor, Any]]:
    """`(rows, tokens, table of columns)` batches of a streamed split, rows numbered in stream order."""
    if rows is not None:
        raise ValueError(
            "`rows` needs an in-memory split (a streamed split has no random access); embed the whole stream, or "
            "load the zoo without streaming=True."
        )
    features = split_dataset.features or {}
    missing = [name for name in (TOKENS_COLUMN, *columns) if name not in features]
    if missing:
        raise ValueError(f"Unknown column(s) {missing}; the streamed split has {list(features)}.")
    num_tokens, token_size = features[TOKENS_COLUMN].shape
    seen = 0
    for table in split_dataset.with_format("arrow").iter(batch_size=batch_size):
        chunk = table.column(TOKENS_COLUMN).combine_chunks()
        tokens = torch.from_numpy(token_chunk_array(chunk, TOKENS_COLUMN, num_tokens, token_size).copy()).float()
        yield np.arange(seen, seen + len(table), dtype=np.int64), tokens, table.select(list(columns))
        seen += len(table)


def layer_pooling_matrix(token_layer: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
    """`[num_layers, S]` matrix whose rows average the tokens of each layer (`A @ latents` = per-layer means)."""
    token_layer = torch.as_tensor(token_layer, dtype=torch.long)
    num_layers = int(token_layer.max()) + 1 if num_layers is None else num_layers
    one_hot = torch.nn.functional.one_hot(token_layer, num_layers).T.float()  # [num_layers, S]
    return one_hot / one_hot.sum(dim=1, keepdim=True).clamp(min=1.0)


def pool_token_latents(token_latents: torch.Tensor, pooling_matrix: torch.Tensor, pooling: str) -> torch.Tensor:
    """Features `[B, F]` from token latents `[B, S, L]` for one of `POOLINGS` (see the module docstring)."""
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    batch_size = token_latents.shape[0]
    if pooling == "concat":
        return token_latents.reshape(batch_size, -1)
    mean = token_latents.mean(dim=1)
    if pooling == "mean":
        return mean
    weights = pooling_matrix.to(token_latents)
    layers = torch.einsum("ls,bsd->bld", weights, token_latents)
    if pooling == "stats":
        squares = torch.einsum("ls,bsd->bld", weights, token_latents.square())
        variance = squares - layers.square()
        # A layer of one token (a ViT's [CLS] token) has variance 0, where sqrt's gradient is infinite and made the
        # fine-tuned probe's loss NaN; there the spread is 0 with a zero gradient.
        positive = variance > 0
        spread = torch.where(positive, variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt(), 0.0)
        return torch.cat([layers, spread], dim=2).reshape(batch_size, -1)
    layers = layers.reshape(batch_size, -1)
    return layers if pooling == "layers" else torch.cat([mean, layers], dim=1)


def check_model_matches_layout(
    model,
    layout: TokenLayout,
    model_source: str | None = None,
    dataset_source: str | None = None,
    trained_layout: TokenLayout | None = None,
) -> None:
    """Raise a `ValueError` naming both numbers (and the model / dataset, when given) if the SANE's token size or
    position tables do not fit `layout`, or if `trained_layout` (the layout of the SANE's weight processor) has other
    layers than `layout`."""
    config = model.config
    sane = f"The SANE model {model_source}" if model_source else "The SANE model"
    dataset = f"the dataset {dataset_source}" if dataset_source else "the dataset"
    if config.token_size != layout.token_size:
        raise ValueError(
            f"{sane} has token_size {config.token_size} (config.json), but {dataset} has token_size "
            f"{layout.token_size} (meta/layout.json); retokenize the zoo with --token_size {config.token_size} or "
            "use a SANE trained on this tokenization."
        )
    for coordinate, (needed, have) in enumerate(zip(layout.max_positions, config.max_positions)):
        if have < needed:
            raise ValueError(
                f"{sane} has max_positions[{coordinate}]={have}, but the layout of {dataset} needs {needed} "
                f"(positions {layout.max_positions}); this SANE cannot embed these models."
            )
    trained = [layer.name for layer in trained_layout.layers] if trained_layout is not None else []
    layers = [layer.name for layer in layout.layers]
    if trained and trained != layers:
        # Another architecture: its tokens sit at positions and in normalization layers the SANE never saw.
        raise ValueError(
            f"{sane} was pretrained on another architecture than {dataset}: its weight processor has {len(trained)} "
            f"layers ({', '.join(trained[:3])}, ...), meta/layout.json has {len(layers)} ({', '.join(layers[:3])}, "
            "...); expected a dataset of the architecture the SANE was trained on."
        )


def embed_zoo(
    model,
    split_dataset,
    layout: TokenLayout,
    batch_size: int = 64,
    precision: str = "fp32",
    pooling: str | Sequence[str] = "mean",
    properties: Sequence[str] | None = None,
    rows: Sequence[int] | None = None,
    token_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    permuter: TokenPermuter | None = None,
    num_permutations: int = 8,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Embed every checkpoint of one split with a SANE encoder (docs/method.md#probes), without gradients.

    Args:
        model (`SaneModel`): the pretrained SANE; put in eval mode here (dropout off) and restored afterwards.
        split_dataset (`datasets.Dataset` or `datasets.IterableDataset`): one split of a tokenized zoo
            (`load_zoo_dataset(...).splits[split]`); a streamed split (`streaming=True`) is embedded in stream order,
            one pass, rows numbered 0..N-1 (no `rows`).
        layout (`TokenLayout`): the zoo's layout (positions and the token -> layer map).
        batch_size (`int`, *optional*, defaults to 64): checkpoints read and encoded per step.
        precision (`str`, *optional*, defaults to `"fp32"`): `"bf16"` runs the encoder under bf16 autocast, `"auto"`
            does so only where the device has fast bf16 kernels (`sane_hf.utils.precision`). Outputs are float32
            either way.
        pooling (`str` or `Sequence[str]`, *optional*, defaults to `"mean"`): one or more of `POOLINGS`; each gives
            an entry of `features`.
        properties (`Sequence[str]`, *optional*): property columns to return as `targets` (default: none).
        rows (`Sequence[int]`, *optional*): embed only these rows, in this order.
        token_transform (`Callable`, *optional*): applied to each `[b, S, T]` token batch before encoding (e.g. to
            re-normalize tokens with the model's own statistics).
        permuter (`TokenPermuter`, *optional*): average every output over `num_permutations` random
            function-preserving permutations of each checkpoint (test-time augmentation). A network and its
            permutations are the same function (docs/method.md#canonicalization, docs/method.md#objective), but SANE's latents are not invariant to
            them; the average is an embedding of the function rather than of one arbitrary ordering of its units.
        num_permutations (`int`, *optional*, defaults to 8): permutations per checkpoint when `permuter` is set.
        generator (`torch.Generator`, *optional*): draws the permutations (reproducible runs).

    Returns:
        `dict` with `embeddings` (`[N, L]`, mean over tokens), `layer_embeddings` (`[N, num_layers, L]`, mean over
        each layer's tokens), `features` (`{pooling: [N, F]}`), `targets` (`{property: np.ndarray}`) and `rows`.

    Example:

    ```python
    >>> zoo = load_zoo_dataset("runs/zoo_ds")
    >>> model = SaneModel.from_pretrained("runs/sane")
    >>> out = embed_zoo(model, zoo.splits["test"], zoo.layout, pooling=["mean", "mean+layers"], properties=["test_acc"])
    >>> out["embeddings"].shape, out["features"]["mean+layers"].shape
    (torch.Size([598, 32]), torch.Size([598, 192]))
    ```
    """
    poolings = [pooling] if isinstance(pooling, str) else list(pooling)
    for name in poolings:
        if name not in POOLINGS:
            raise ValueError(f"`pooling` must be among {POOLINGS}, got {name!r}.")
    if permuter is not None and (not isinstance(num_permutations, int) or num_permutations < 1):
        raise ValueError(f"`num_permutations` must be a positive int, got {num_permutations!r}.")
    check_model_matches_layout(model, layout)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device, "embedding")
    positions = layout.positions
    pooling_matrix = layer_pooling_matrix(layout.token_layer, layout.num_layers)
    if "concat" in poolings and layout.num_tokens * model.config.latent_dim > _CONCAT_WARN_FEATURES:
        logger.warning(
            "pooling='concat' gives %d features per checkpoint (%d tokens x %d); the probe will be slow.",
            layout.num_tokens * model.config.latent_dim,
            layout.num_tokens,
            model.config.latent_dim,
        )

    was_training = model.training
    model.eval()
    embeddings, layer_embeddings = [], []
    features: dict[str, list[torch.Tensor]] = {name: [] for name in poolings}
    order = []
    streamed = _is_streamed(split_dataset)
    if streamed:
        # Rows in stream order, numbered 0..N-1; the property columns come along with the tokens (one pass).
        property_tables = []

        def batches():
            for batch_rows, tokens, table in _iter_streamed_batches(split_dataset, batch_size, rows, properties or []):
                property_tables.append(table)
                yield batch_rows, tokens

        batches = batches()
    else:
        batches = iter_token_batches(split_dataset, batch_size, rows)
    try:
        for batch_rows, batch_tokens in batches:
            draws = num_permutations if permuter is not None else 1
            sums: dict[str, torch.Tensor] = {}
            for _ in range(draws):
                tokens = batch_tokens
                if permuter is not None:
                    tokens = permuter.permute_models(tokens, generator)
                if token_transform is not None:
                    tokens = token_transform(tokens)
                with precision_autocast(precision, device):
                    # Snippets per pass: the model's device-aware default, not `batch_size` (checkpoints per step).
                    _, token_latents = model.embed(tokens.to(device), positions.to(device), return_token_latents=True)
                token_latents = token_latents.float().cpu()
                outputs = {
                    "embeddings": token_latents.mean(dim=1),
                    "layer_embeddings": torch.einsum("ls,bsd->bld", pooling_matrix, token_latents),
                }
                outputs.update({name: pool_token_latents(token_latents, pooling_matrix, name) for name in poolings})
                for key, value in outputs.items():
                    sums[key] = sums[key] + value if key in sums else value
            embeddings.append(sums["embeddings"] / draws)
            layer_embeddings.append(sums["layer_embeddings"] / draws)
            for name in poolings:
                features[name].append(sums[name] / draws)
            order.append(batch_rows)
    finally:
        model.train(was_training)
    latent_dim = model.config.latent_dim
    order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    if streamed and properties:
        import pyarrow as pa

        targets = _table_columns(pa.concat_tables(property_tables), list(properties))
    else:
        targets = read_columns(split_dataset, list(properties or []), order) if properties else {}
    return {
        "embeddings": torch.cat(embeddings) if embeddings else torch.zeros(0, latent_dim),
        "layer_embeddings": (
            torch.cat(layer_embeddings) if layer_embeddings else torch.zeros(0, layout.num_layers, latent_dim)
        ),
        "features": {name: torch.cat(values) if values else torch.zeros(0, 0) for name, values in features.items()},
        "targets": targets,
        "rows": order,
    }


def embed_zoo_across_processes(model, split_dataset, layout: TokenLayout, **kwargs: Any) -> dict[str, Any]:
    """`embed_zoo` with the checkpoints split over the processes of an Accelerate (or torchrun) launch.

    Every process embeds a contiguous share of the batches of `batch_size` rows (one process per GPU or several CPU
    processes, e.g. `torchrun --nproc_per_node 2`; docs/architecture.md#work-over-processes) and every process gets
    the whole result back, rows in the order of a single-process run. A batch is encoded as one process encodes it,
    so the result is bit-identical to `embed_zoo`'s; with a `permuter`, each process first draws the permutations of
    the batches before its share from `generator` (and those after it afterwards), so every batch gets the
    permutations one process gives it and `generator` ends where one process leaves it. Without a launcher this is
    `embed_zoo`. Takes `embed_zoo`'s arguments.
    """
    if _is_streamed(split_dataset):
        # One pass over the stream; splitting it by process would need the row counts up front.
        return embed_zoo(model, split_dataset, layout, **kwargs)
    rows = kwargs.pop("rows", None)
    rows = list(range(split_dataset.num_rows)) if rows is None else [int(row) for row in rows]
    # A model on the CPU means CPU processes (a gloo group); on an accelerator, one process per device.
    processes = Processes.current(cpu=next(model.parameters()).device.type == "cpu")
    if processes.count == 1:
        return embed_zoo(model, split_dataset, layout, rows=rows, **kwargs)
    defaults = inspect.signature(embed_zoo).parameters
    batch_size = kwargs.get("batch_size", defaults["batch_size"].default)
    num_permutations = kwargs.get("num_permutations", defaults["num_permutations"].default)
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    share = processes.share(len(batches))

    def skip_draws(skipped: list[list[int]]) -> None:
        if kwargs.get("permuter") is not None:
            for batch in skipped:
                for _ in range(num_permutations):
                    kwargs["permuter"].sample_permutations(kwargs.get("generator"), batch_size=len(batch))

    skip_draws(batches[: share.start])
    own_rows = [row for batch in batches[share.start : share.stop] for row in batch]
    part = embed_zoo(model, split_dataset, layout, rows=own_rows, **kwargs) if own_rows else None
    skip_draws(batches[share.stop :])
    parts = [p for p in processes.gather([part]) if p is not None]
    if not parts:  # no rows at all
        return embed_zoo(model, split_dataset, layout, rows=[], **kwargs)
    return {
        "embeddings": torch.cat([p["embeddings"] for p in parts]),
        "layer_embeddings": torch.cat([p["layer_embeddings"] for p in parts]),
        "features": {name: torch.cat([p["features"][name] for p in parts]) for name in parts[0]["features"]},
        "targets": {name: np.concatenate([p["targets"][name] for p in parts]) for name in parts[0]["targets"]},
        "rows": np.concatenate([p["rows"] for p in parts]),
    }


__all__ = [
    "POOLINGS",
    "check_model_matches_layout",
    "embed_zoo",
    "embed_zoo_across_processes",
    "iter_token_batches",
    "layer_pooling_matrix",
    "pool_token_latents",
    "read_columns",
]
