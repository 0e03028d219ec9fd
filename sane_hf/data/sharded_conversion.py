"""Conversion of a zoo sharded over processes or machines (docs/architecture.md#work-over-processes).

`K` workers convert the same zoo with the same options; worker `i` writes the parquet shards whose index (counted
over the splits in order: train's shards, then val's, then test's) is `i` modulo `K`, into a staging folder next to
the output folder (`.<name>.shards/`, on a file system every worker sees), plus a record of the dataset's metadata
and of the checksums of its shards. Once all `K` are done, one finalize step checks the records, writes
`meta/*.json` (with every shard's checksum) and the card, and renames the folder into place: the same dataset, file
for file, as a one-process conversion.

Every worker reads the whole zoo: which checkpoints survive the filter (SANE §2.2) decides where each shard starts,
and the normalization statistics are fitted on the whole train split, in the order one process streams it, so each
worker fits the same statistics itself rather than combining partial sums (whose rounding would differ). Encoding
and writing the shards, the largest cost of a conversion (`BackgroundWriter` in shard_writer.py), is what is shared out.

    python scripts/convert_zoo.py --config c.yaml --num_shards 4 --shard_index 0   # ... to 3, anywhere
    python scripts/convert_zoo.py --config c.yaml --num_shards 4 --finalize true   # once all four are done
    accelerate launch --num_processes 4 scripts/convert_zoo.py --config c.yaml     # one shard per process
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import output_lock, write_json_atomic
from ..utils.processes import Processes
from .configs import ConvertConfig
from .convert import ConvertResult, _check_output_dir, _move_into_place, convert_zoo, write_meta_and_card
from .info import SaneDatasetInfo
from .push import push_zoo_dataset


logger = logging.getLogger(__name__)

_RECORD = "shard-{index:05d}-of-{count:05d}.json"


@dataclass
class ShardingConfig:
    """How a conversion is sharded (`sane-convert-zoo`'s sharding options, next to `ConvertConfig`'s).

    Args:
        num_shards (`int`, *optional*): workers sharing the conversion. Default: the processes of the launch (one
            process without a launcher, an ordinary conversion).
        shard_index (`int`, *optional*): this worker's index, `0 .. num_shards - 1` (separate invocations).
        finalize (`bool`, *optional*, defaults to `False`): complete a conversion whose `num_shards` workers are
            done: write the metadata and the card and move the dataset into place.
    """

    num_shards: int | None = field(
        default=None, metadata={"help": "Workers sharing the conversion (default: the processes of the launch)."}
    )
    shard_index: int | None = field(
        default=None, metadata={"help": "This worker's index, 0 .. num_shards - 1 (one invocation per worker)."}
    )
    finalize: bool = field(default=False, metadata={"help": "Write the metadata and card once every worker is done."})

    def __post_init__(self):
        for name in ("num_shards", "shard_index"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"`{name}` must be an int, got {value!r}.")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"`num_shards` must be a positive int, got {self.num_shards}.")
        if self.shard_index is not None and self.num_shards is None:
            raise ValueError("`shard_index` needs `num_shards` (how many workers share the conversion).")
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"`shard_index` must be in 0 .. {self.num_shards - 1} (`num_shards`={self.num_shards}), got "
                f"{self.shard_index}."
            )
        if self.finalize and (self.num_shards is None or self.shard_index is not None):
            raise ValueError("`finalize` needs `num_shards` (the workers to collect) and no `shard_index`.")


def staging_dir(output_dir: str | os.PathLike) -> Path:
    """The folder the workers of a sharded conversion of `output_dir` write into: `.<name>.shards/` next to it."""
    output_dir = Path(output_dir)
    return output_dir.parent / f".{output_dir.name}.shards"


@dataclass(frozen=True)
class ShardAssignment:
    """Worker `index` of `count`: which shards it writes and where (`write_zoo_dataset`'s `shards`)."""

    index: int
    count: int

    def owns_from(self, first: int) -> Callable[[int], bool]:
        """Whether shard `i` of a split whose first shard is shard `first` of the dataset is written here."""
        return lambda i: (first + i) % self.count == self.index

    def record_path(self, folder: Path) -> Path:
        return folder / _RECORD.format(index=self.index, count=self.count)

    def staging_dir(self, output_dir: Path) -> Path:
        """The shared staging folder, created if needed, without this worker's files of an earlier attempt."""
        folder = staging_dir(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.discard(folder)
        return folder

    def discard(self, folder: Path) -> None:
        """Withdraw this worker's record (the finalize step then reports it unfinished). Its shards stay: a rerun
        rewrites them under the same names, and the finalize step removes files no record names."""
        self.record_path(folder).unlink(missing_ok=True)

    def write_record(
        self,
        folder: Path,
        info: SaneDatasetInfo,
        layout: Mapping[str, Any],
        normalization: Mapping[str, Any],
        conversion: Mapping[str, Any] | None,
    ) -> None:
        """The metadata this worker computed (every worker computes the same) and the checksums of its shards."""
        record = {"info": info.to_dict(), "layout": layout, "normalization": normalization, "conversion": conversion}
        write_json_atomic(self.record_path(folder), record)


def _comparable(record: Mapping[str, Any]) -> dict[str, Any]:
    """A worker record without what differs between workers (their own shards' checksums and sizes)."""
    info = dict(record["info"])
    info.pop("checksums", None)
    info["splits"] = {name: {**split, "num_bytes": 0} for name, split in info["splits"].items()}
    return {**record, "info": info}


def finalize_sharded_conversion(config: ConvertConfig, num_shards: int) -> ConvertResult:
    """Complete a conversion whose `num_shards` workers are done: check their records, write `meta/*.json` (with
    every shard's checksum) and the card, and rename the staging folder into `config.output_dir`.

    Raises:
        `FileNotFoundError`: a worker has not finished (no record) or a shard it recorded is missing.
        `ValueError`: the workers converted different zoos or options.
    """
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    folder = staging_dir(output_dir)
    with output_lock(output_dir):
        _check_output_dir(output_dir, config.overwrite)
        paths = [ShardAssignment(index, num_shards).record_path(folder) for index in range(num_shards)]
        missing = [index for index, path in enumerate(paths) if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: shard worker(s) {missing} of {num_shards} have not finished (no {paths[missing[0]].name});"
                f" expected every worker's --num_shards {num_shards} --shard_index i run before --finalize."
            )
        records = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
        for index, record in enumerate(records[1:], start=1):
            if _comparable(record) != _comparable(records[0]):
                raise ValueError(
                    f"{paths[index]}: shard worker {index} converted another zoo or with other options than worker "
                    f"0 ({paths[0].name}); expected every worker to run the same conversion."
                )
        recorded = {name: item for record in records for name, item in record["info"]["checksums"].items()}
        info = dict(records[0]["info"])
        checksums: dict[str, Any] = {}
        splits = {}
        for name, split in info["splits"].items():
            for file in split["files"]:
                path = folder / file
                if file not in recorded or not path.is_file() or path.stat().st_size != recorded[file]["size"]:
                    raise FileNotFoundError(
                        f"{path}: shard of the {name} split missing or not the one its worker recorded; rerun "
                        "that worker before --finalize."
                    )
                checksums[file] = recorded[file]
            splits[name] = {**split, "num_bytes": sum((folder / file).stat().st_size for file in split["files"])}
        info = SaneDatasetInfo.from_dict({**info, "splits": splits, "checksums": checksums}, source=str(paths[0]))
        # Anything else in the staging folder is a leftover of an interrupted worker (or the records themselves).
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file() and path.relative_to(folder).as_posix() not in checksums:
                path.unlink()
        write_meta_and_card(
            folder, info, records[0]["layout"], records[0]["normalization"], records[0]["conversion"],
            config.push_to_hub,
        )  # fmt: skip
        _move_into_place(folder, output_dir)
    logger.info("Finalized the %d-worker conversion into %s.", num_shards, output_dir)
    num_bytes = sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file())
    url = None
    if config.push_to_hub:

        url = push_zoo_dataset(output_dir, config.push_to_hub, private=config.hub_private)
    seconds = time.perf_counter() - start
    return ConvertResult(output_dir=output_dir, info=info, seconds=seconds, num_bytes=num_bytes, url=url)


def convert_zoo_sharded(
    config: ConvertConfig, sharding: ShardingConfig, *, show_progress: bool = True
) -> ConvertResult:
    """`sane-convert-zoo` with its sharding options: one worker (`shard_index`), the finalize step (`finalize`),
    or, under `accelerate launch` / torchrun, one worker per process and the main process finalizing after all are
    done. Without sharding options and without a launcher, `convert_zoo`."""
    if sharding.finalize:
        return finalize_sharded_conversion(config, sharding.num_shards)
    if sharding.shard_index is not None:
        return convert_zoo(
            config, show_progress=show_progress, shards=ShardAssignment(sharding.shard_index, sharding.num_shards)
        )
    processes = Processes.current()
    if processes.count == 1 and sharding.num_shards in (None, 1):
        return convert_zoo(config, show_progress=show_progress)
    if sharding.num_shards not in (None, processes.count):
        raise ValueError(
            f"`num_shards`={sharding.num_shards} without `shard_index` needs a launch of {sharding.num_shards} "
            f"processes (one shard worker each), found {processes.count}; pass --shard_index i to run one worker."
        )
    shards = ShardAssignment(processes.index, processes.count)
    result = convert_zoo(config, show_progress=show_progress and processes.is_main, shards=shards)
    processes.barrier()  # every worker's shards and record are written
    if processes.is_main and not result.skipped:
        result = finalize_sharded_conversion(config, processes.count)
    processes.barrier()
    return result


__all__ = [
    "ShardAssignment",
    "ShardingConfig",
    "convert_zoo_sharded",
    "finalize_sharded_conversion",
    "staging_dir",
]
