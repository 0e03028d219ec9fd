"""Telling Hub repo ids from local paths, in one place (the loaders, the cards and the generated models use it)."""

from __future__ import annotations

import os
from pathlib import Path


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
