"""Work shared out over the processes of an Accelerate (or torchrun) launch (docs/architecture.md#work-over-processes).

`Processes.current()` is the launch this process belongs to: one process without a launcher, else every process
of `accelerate launch --num_processes K` / `torchrun --nproc_per_node K` (one per GPU, or several CPU processes
with a gloo group). Work is shared out in contiguous index ranges (`share`) and the pieces are put back together
in index order on every process (`gather`), so the result does not depend on the number of processes as long as
every item's computation does not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object


@dataclass(frozen=True)
class Processes:
    """The processes of a launch: this one's `index` among `count`.

    Example:

    ```python
    >>> processes = Processes.current()
    >>> mine = processes.share(10)                      # range(0, 5) on process 0 of 2, range(5, 10) on process 1
    >>> squares = processes.gather([i * i for i in mine])  # all ten, in order, on every process
    ```
    """

    index: int = 0
    count: int = 1

    @classmethod
    def current(cls, cpu: bool = True) -> Processes:
        """This process's place in the launch; `Processes()` (one process) without a launcher.

        `cpu` makes a launch of several processes CPU processes (a gloo group) rather than one per accelerator.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()

        state = PartialState(cpu=cpu)
        return cls(index=state.process_index, count=state.num_processes)

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes the files (process 0)."""
        return self.index == 0

    def share(self, total: int, start: int = 0) -> range:
        """This process's contiguous share of the indices `start .. start + total - 1`; the first `total % count`
        processes get one index more (as `PartialState.split_between_processes`)."""
        size, extra = divmod(total, self.count)
        first = start + self.index * size + min(self.index, extra)
        return range(first, first + size + (self.index < extra))

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every process's `items` (its share, in order), concatenated in process order, on every process."""
        if self.count == 1:
            return list(items)

        return list(gather_object(list(items)))

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.count > 1:

            PartialState().wait_for_everyone()


__all__ = ["Processes"]
