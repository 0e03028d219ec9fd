"""Small shared helpers."""

from .io import write_bytes_atomic, write_json_atomic, write_text_atomic


__all__ = ["write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
