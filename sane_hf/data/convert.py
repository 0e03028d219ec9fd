"""A model zoo as a Hub dataset: the conversion (zoo -> parquet + meta + card).

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
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from ..constants import VALIDATION_SPLIT, VERSION
from ..hub.cards import build_dataset_card
from ..tokenization import (
    TokenLayout,
    TokenNormalization,
    detect_batchnorm_modules,
    detect_transposed_weights,
)
from ..tokenization.memory import check_fits_in_memory
from ..utils.allocation import retain_freed_memory
from ..utils.io import (
    check_output_apart_from_inputs,
    file_checksum,
    make_temporary_dir,
    output_lock,
    write_json_atomic,
)
from ..utils.threads import torch_threads
from ..zoo_models import build_zoo_model
from .configs import ConvertConfig, check_split_fractions
from .info import (
    DATA_DIR,
    INFO_PATH,
    LAYOUT_PATH,
    META_DIR,
    NORMALIZATION_PATH,
    SaneDatasetInfo,
    SplitInfo,
)
from .push import push_zoo_dataset
from .shard_writer import BackgroundWriter, ShardWriter, dataset_features
from .zoo import CheckpointRecord, ZooReader, open_zoo
from .zoo_permutations import Canonicalizer, permutation_spec_known


logger = logging.getLogger(__name__)


# What a conversion was made from (its options and the zoo's model ids), so that the same command run again can see
# that the dataset is already complete and skip it.
CONVERSION_PATH = f"{META_DIR}/conversion.json"


# `ConvertConfig` options that do not change the dataset.
_CONVERSION_RUN_CONTROL = (
    "output_dir",
    "overwrite",
    "num_threads",
    "retain_freed_memory",
    "push_to_hub",
    "hub_private",
    "private",
)


# Properties first in this order (the original's result keys, docs/zoo_dataset_format.md), then the rest sorted.
_PROPERTY_ORDER = ("test_acc", "train_acc", "val_acc", "test_loss", "train_loss", "val_loss", "ggap")


# Tokenize this many checkpoints per call (bounded by bytes too): one batched gather instead of many small ones.
# The byte bound caps peak memory for large checkpoints: a batch lives as weights, raw tokens, normalized tokens and
# a float64 copy for the statistics at once, so 64 MB of ResNet-18 weights (2 checkpoints) costs ~0.7 GB; larger
# batches only add memory, since one ResNet-18 is already a large copy (benchmarks/bench_scale.py).
_TOKENIZE_BATCH = 64


_TOKENIZE_BATCH_BYTES = 64 << 20


def _epoch_ranges(epochs: Sequence[int]) -> str:
    """`[0, 1, 2, 5]` -> `"0-2, 5"` (for messages)."""
    parts: list[str] = []
    for epoch in epochs:
        if parts and epoch == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{epoch}"
        else:
            parts.append(str(epoch))
    return ", ".join(parts) or "none"


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
    writes = BackgroundWriter()
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
            canonicalize = permutation_spec_known(architecture, model_kwargs)
        canonical = Canonicalizer(reader, first.model_id, architecture, model_kwargs, seed) if canonicalize else None
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
        features = dataset_features(layout.num_tokens, layout.token_size, properties)
        writers: dict[str, tuple[ShardWriter, set[str]]] = {}
        for split, model_ids in splits.items():
            owns = None if shards is None else shards.owns_from(sum(w.num_shards for w, _ in writers.values()))
            writer = ShardWriter(
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
    if config.retain_freed_memory:
        retain_freed_memory()
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
