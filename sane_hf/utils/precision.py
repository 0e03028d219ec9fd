"""Compute precision of inference (embedding, decoding, sampling, property prediction): float32 or bf16 autocast.

`"auto"` picks bf16 only where the device has fast bf16 matrix kernels: a CUDA GPU that supports bf16, or a CPU with
AVX512-BF16 or AMX-BF16 instructions. Elsewhere bf16 matmuls are emulated and run slower than float32, so `"auto"`
stays in float32. Outputs (embeddings, decoded tokens) are float32 whatever the compute precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch


logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (/proc/cpuinfo) of instructions that compute bf16 dot products natively.
_FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_fast_bf16(device: torch.device | str, flags: Iterable[str] | None = None) -> bool:
    """Whether `device` has fast bf16 matrix kernels (`flags`: CPU flags to use instead of the machine's)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in set(cpu_flags() if flags is None else flags) for flag in _FAST_BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device | str, what: str = "inference") -> str:
    """`"fp32"` or `"bf16"` for `precision` (one of `PRECISIONS`) on `device`; logs the choice `"auto"` made."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return precision
    chosen = "bf16" if has_fast_bf16(device) else "fp32"
    reason = "has fast bf16 kernels" if chosen == "bf16" else "has no fast bf16 kernels"
    logger.info("precision='auto' for %s: %s (%s %s).", what, chosen, torch.device(device).type, reason)
    return chosen


def precision_autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for a resolved `precision` of `"bf16"`, a no-op context for `"fp32"`."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["PRECISIONS", "cpu_flags", "has_fast_bf16", "precision_autocast", "resolve_precision"]
