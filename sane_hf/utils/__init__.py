"""Small shared helpers."""

from .io import write_bytes_atomic, write_json_atomic, write_text_atomic
from .memory import empty_hugepage


__all__ = ["empty_hugepage", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
