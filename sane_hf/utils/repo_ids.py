"""Telling Hub repo ids from local paths, in one place (the loaders, the cards and the generated models use it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def looks_like_path(value: str) -> bool:
    """Whether `value` cannot be a Hub repo id (`name` or `org/name`) and so is meant as a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value or value.endswith("/")


def hub_id_or_none(value: str | os.PathLike | None) -> str | None:
    """`value` if it can be a Hub repo id and is not an existing local path, else `None`.

    Only Hub ids belong in a card's `datasets` / `base_model` metadata; local paths are shown in the text only.
    """
    if not value:
        return None
    text = os.fspath(value)
    if Path(text).expanduser().exists() or looks_like_path(text):
        return None
    return text


def load_local_or_hub(value: str, what: str, flag: str, loader: Callable[[str], Any]) -> Any:
    """`loader(value)` for a local `what` folder or a Hub repo id, with one-line errors that name `--flag value`: a
    file where a folder was expected, a path that does not exist, or an id the Hub cannot serve (offline, not found).
    """
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--{flag} {value}: expected a {what} folder or a Hub id, found a file.")
        return loader(str(path))
    if looks_like_path(value):
        raise FileNotFoundError(f"--{flag} {value}: no such {what} folder.")
    try:
        return loader(value)
    except OSError as err:  # includes the Hub's connection and not-found errors
        raise FileNotFoundError(
            f"--{flag} {value}: not a local {what} folder, and loading it as a Hub repo failed ({err})."
        ) from None
