"""Checkpoint <-> token sequence (SANE_METHOD §1): layouts and per-layer normalization."""

from .layout import StateDictEntry, TokenizedLayer, TokenLayout, detect_batchnorm_modules
from .normalization import TokenNormalization


__all__ = ["StateDictEntry", "TokenLayout", "TokenNormalization", "TokenizedLayer", "detect_batchnorm_modules"]
