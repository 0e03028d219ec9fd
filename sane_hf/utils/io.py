"""Safe output and checked input: atomic file writes (a temporary file in the same folder, renamed over the target,
so readers and crashes never leave half a file), one writer per output folder, outputs kept apart from inputs, values
made writable as JSON, and JSON files read with a one-line error naming the file."""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


# The process umask, read once at import: mkstemp creates 0600 files, and the renamed file should get the mode a
# plain `open(path, "w")` would give it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write `data` as indented JSON (with a final newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def json_safe(value: Any, *, strict: bool = True) -> Any:
    """`value` as plain Python that `json` can write: numpy and torch scalars and arrays (also 0-d tensors) become
    Python numbers and lists, mappings become dicts with `str` keys, tuples become lists, recursively; anything else
    is returned unchanged.

    Args:
        value: the value to convert.
        strict (`bool`, *optional*, defaults to `True`): NaN and +-inf become `None`, since strict JSON (and the Hub's
            card metadata) has no such numbers. `False` keeps them as floats (Python's `json` writes `NaN`/`Infinity`;
            a parquet column keeps them).
    """
    if isinstance(value, Mapping):
        return {str(key): json_safe(item, strict=strict) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item, strict=strict) for item in value]
    if hasattr(value, "ndim") and hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return json_safe(value.tolist(), strict=strict)
    if isinstance(value, float):
        return None if strict and not math.isfinite(value) else float(value)
    return value


def read_json(
    path: str | os.PathLike,
    expected: str,
    *,
    missing: type[Exception] | None = FileNotFoundError,
    invalid: type[Exception] = ValueError,
) -> Any:
    """The parsed content of the JSON file `path`, or one error line naming `path` and what was `expected` there.

    Args:
        path (`str` or `os.PathLike`): the file.
        expected (`str`): what the file should hold, for the error message (e.g. "the zoo's config").
        missing (`type`, *optional*, defaults to `FileNotFoundError`): the error a missing file raises; `None` returns
            `None` instead.
        invalid (`type`, *optional*, defaults to `ValueError`): the error raised when the file is not UTF-8 JSON.
    """
    path = Path(path)
    if not path.is_file():
        if missing is None:
            return None
        raise missing(f"{path}: missing; expected {expected}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError
        raise invalid(f"{path}: invalid JSON ({err}); expected {expected}.") from None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def make_temporary_dir(target: str | os.PathLike) -> Path:
    """A new empty folder next to `target`, to build `target` in and rename it into place when complete.

    It is named `.<target name>.tmp-<pid>-<random>`. A writer killed hard (SIGKILL, power loss) cannot remove its
    folder, so such leftovers of `target` whose process no longer runs are removed first; a rerun therefore leaves
    no trace of the interrupted one. (The liveness check assumes writers of one target run on one machine.)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    os.chmod(path, 0o755)  # mkdtemp creates 0700; the folder becomes `target`
    return path


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `write_bytes_atomic` left in `folder` when its writer was killed mid-write.

    Only call this where no other process is writing into `folder` at the same time (e.g. a run's own output folder
    at the start of the run).

    Returns:
        `list[Path]`: the files removed.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_output_apart_from_inputs(output_dir: str | os.PathLike, inputs: dict[str, str | None]) -> None:
    """Raise a `ValueError` when `output_dir` is, contains or lies inside one of the local `inputs`.

    Writing an output replaces or deletes what is in its folder (`--overwrite`, a rename into place, stale-file
    cleanup), so an output that overlaps an input could destroy the input. `inputs` maps an option name
    (`"zoo_dir"`) to its value; values that are not existing local paths (Hub ids, `None`) cannot overlap and are
    skipped.
    """
    output = Path(output_dir).resolve()
    for option, value in inputs.items():
        if value is None or not Path(value).exists():
            continue
        source = Path(value).resolve()
        if output == source:
            relation = "is"
        elif source.is_relative_to(output):
            relation = "contains"
        elif output.is_relative_to(source):
            relation = "is inside"
        else:
            continue
        raise ValueError(
            f"`output_dir` {output_dir} {relation} the input `{option}` {value}; writing it could replace or delete "
            "that input. Choose an output_dir apart from every input."
        )


_LOCK_SUFFIX = ".lock"


def _read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # being written right now, or garbage: treat as held by an unknown writer
    return holder if isinstance(holder, dict) else {}


def _take_lock(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder, f)
    return True


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold `.<target name>.lock` next to `target` while writing `target`: one writer per output at a time.

    The lock file names its holder (pid, host, start time). A second writer gets a `FileExistsError` naming the
    holder; a lock left by a process of this host that no longer runs (killed hard) is taken over. The lock lies
    next to the target rather than inside it because some writers build the target elsewhere and rename it into
    place. Locks of other hosts are never taken over: their liveness cannot be checked from here.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}{_LOCK_SUFFIX}"
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if not _take_lock(path, holder):
        other = _read_lock(path)
        stale = (
            other.get("host") == holder["host"]
            and isinstance(other.get("pid"), int)
            and not _process_alive(other["pid"])
        )
        if stale:
            logger.warning("Taking over %s, left by process %d, which no longer runs.", path, other["pid"])
            path.unlink(missing_ok=True)
        if not stale or not _take_lock(path, holder):
            other = _read_lock(path) or other
            raise FileExistsError(
                f"{target} is being written by another process (pid {other.get('pid', '?')} on host "
                f"{other.get('host', '?')} since {other.get('started', '?')}; lock file {path}). Wait for it to "
                "finish, or delete the lock file if that process is gone."
            )
    try:
        yield path
    finally:
        if _read_lock(path).get("pid") == holder["pid"]:
            path.unlink(missing_ok=True)


def bytes_checksum(data: bytes) -> dict[str, int | str]:
    """`{"size": bytes, "sha256": hex digest}` of `data` (the content of a file about to be written)."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_checksum(path: str | os.PathLike) -> dict[str, int | str]:
    """`{"size": bytes, "sha256": hex digest}` of a file, as recorded next to the files the project writes."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": os.path.getsize(path), "sha256": digest}


def verify_file_checksum(path: str | os.PathLike, recorded: dict, recorded_in: str, data: bytes | None = None) -> None:
    """Raise a `ValueError` naming `path` when its size or sha256 differs from `recorded` (a `file_checksum` result
    read from the file `recorded_in`). The size is compared first, so a truncated file costs no hashing. `data`: the
    file's content when the caller has already read it."""
    path = Path(path)
    size = path.stat().st_size if data is None else len(data)
    if size != recorded.get("size"):
        raise ValueError(
            f"{path}: {size} bytes, but {recorded_in} records {recorded.get('size')}; the file is truncated, "
            "replaced or corrupt. Restore it (or write it again)."
        )
    actual = (file_checksum(path) if data is None else bytes_checksum(data))["sha256"]
    if actual != recorded.get("sha256"):
        raise ValueError(
            f"{path}: sha256 {actual[:16]}... does not match {recorded.get('sha256', '?')[:16]}... recorded in "
            f"{recorded_in}; the file is corrupt or replaced. Restore it (or write it again)."
        )
