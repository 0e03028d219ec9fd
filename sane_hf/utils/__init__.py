"""Small shared helpers."""

from .memory import empty_hugepage


__all__ = ["empty_hugepage"]
