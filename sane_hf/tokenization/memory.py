"""Memory checks of large CPU buffers.

Large outputs are plain `torch.empty` tensors. Asking the kernel for transparent huge pages for them (numpy's
`madvise(MADV_HUGEPAGE)`, which sane_hf did before) made the first calls of a process several times slower on
virtual machines whose host backs huge pages lazily (BENCHMARKS.md, levers of the tokenizer); repeated allocations
are served best by keeping freed memory in the process (`sane_hf.utils.allocation`).
"""

from __future__ import annotations

import os


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
