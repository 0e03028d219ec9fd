"""Allocation of large CPU buffers.

A fresh multi-megabyte `torch.empty` on CPU is backed by 4 KiB pages that the kernel faults in and zeroes on first
touch; for a ResNet-18's tokens (62 MB) that costs more than the copy itself (BENCHMARKS.md has the
measurement). numpy asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) for large arrays, which
cuts the faults 512-fold, so large CPU outputs are allocated through numpy and wrapped without a copy.

This file travels into every SANE Hub repository with the weight processor (`processing_sane.py`, for
`trust_remote_code`), so it imports only numpy and torch.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
_HUGEPAGE_MIN_BYTES = 4 << 20  # numpy's own threshold for requesting huge pages


def empty_hugepage(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """`torch.empty(shape, dtype=dtype, device=device)`, backed by huge pages when it is a large CPU buffer."""
    device = torch.device(device)
    numpy_dtype = _NUMPY_DTYPES.get(dtype)
    if device.type != "cpu" or numpy_dtype is None or math.prod(shape) * dtype.itemsize < _HUGEPAGE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=numpy_dtype))


def physical_memory_bytes() -> int:
    """The machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(what: str, num_bytes: int, limit: int | None = None) -> None:
    """Raise a `ValueError` before an allocation of about `num_bytes` for `what` (which names the option and its
    value) that cannot fit in `limit` bytes (default: the machine's physical memory), instead of an out-of-memory
    crash in the middle of the work."""
    limit = physical_memory_bytes() if limit is None else limit
    if num_bytes > limit:
        raise ValueError(
            f"{what} needs about {num_bytes / 2**30:,.1f} GiB of memory, more than this machine's "
            f"{limit / 2**30:,.1f} GiB; expected a smaller value."
        )
