"""Keeping freed memory in the process for reuse (glibc's malloc), so large temporaries stop faulting in fresh pages.

glibc's malloc serves a large request (above a threshold that grows to at most 32 MiB) with its own `mmap` and
returns it to the kernel with `munmap` when it is freed. A training step allocates and frees the same large
activations and gradients every step (a config (a) step's MLP activations alone are 64 MiB each), so every step pays
the kernel for zeroed pages again: page faults, not arithmetic. With a higher `M_MMAP_THRESHOLD` these requests come
from malloc's heap, and with a higher `M_TRIM_THRESHOLD` freed memory stays there for the next step instead of
being handed back. BENCHMARKS.md ("levers of the training step") has the measured effect; the price is that the
process keeps its peak heap until it exits.

The setting is process-wide and cannot be undone (glibc has no call that reads the previous values back), so
callers opt in: `PretrainConfig.retain_freed_memory` and `ConvertConfig.retain_freed_memory`, on by default for
training runs and conversions.
"""

from __future__ import annotations

import ctypes
import logging
import platform


logger = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int: the largest threshold it accepts. Requests above 2 GiB still get their own mapping.
_RETAIN_UP_TO_BYTES = 2**31 - 1

_applied = False


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to serve requests of up to 2 GiB from its heap and to keep freed memory for reuse.

    Returns:
        `bool`: whether the setting is in effect (it stays for the rest of the process); `False` where the C
        library is not glibc (macOS, Windows, musl).
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("retain_freed_memory: the C library is not glibc (%s); left as it is.", platform.platform())
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    # mallopt returns 1 on success, 0 on a value it refuses.
    applied = all(
        libc.mallopt(parameter, ctypes.c_int(_RETAIN_UP_TO_BYTES)) == 1
        for parameter in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)
    )
    if applied:
        # Debug, not info: a run's log (and a bad input's one-line error) stays about the run.
        logger.debug("retain_freed_memory: glibc malloc keeps freed blocks of up to 2 GiB for reuse.")
    else:
        logger.warning("retain_freed_memory: glibc's mallopt refused the thresholds; left as it is.")
    _applied = applied
    return applied


__all__ = ["retain_freed_memory"]
