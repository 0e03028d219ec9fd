"""Atomic file writes: a temporary file in the same folder, renamed over the target, so readers and crashes never
leave half a file (DESIGN.md: "nothing half-written is left behind")."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


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
