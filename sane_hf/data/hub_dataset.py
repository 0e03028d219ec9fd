"""Loading a converted zoo (docs/zoo_dataset_format.md#the-tokenized-dataset): `load_zoo_dataset` reads a local
dataset folder or a Hub dataset repository, checks its metadata and shard checksums, and returns a `SaneZooDataset`
(splits, layout, normalization, info), the one reader pretraining, probing and generation use. Writing the folder is
`convert.py`'s job; uploading it, `push.py`'s."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch

from ..constants import OLD_SPLIT_NAMES, canonical_split
from ..tokenization import (
    TokenLayout,
    TokenNormalization,
)
from ..utils.io import (
    file_checksum,
    read_json,
    verify_file_checksum,
)
from .info import (
    INFO_PATH,
    LAYOUT_PATH,
    META_DIR,
    NORMALIZATION_PATH,
    SaneDatasetInfo,
)
from .window_loaders import WindowDataLoader


logger = logging.getLogger(__name__)


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

        root = Path(
            huggingface_hub.snapshot_download(
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
