"""torch's CPU thread count for the length of one run, given back to the caller afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Run the block with `torch.set_num_threads(num_threads)`; on exit, also on an error, the caller's count is set
    again, so a stage called from a larger program (the quickstart, a notebook, a test) does not change its setting.

    Args:
        num_threads (`int`, *optional*): threads for the block; `0` or `None` keeps torch's current setting.

    Yields:
        `int`: the thread count in effect inside the block.
    """
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
