"""Checks of loaded artifacts that turn silent garbage into a clear error naming the file and the tensor."""

from __future__ import annotations

from itertools import chain

import torch


def check_finite_weights(module: torch.nn.Module, source: str) -> None:
    """Raise a `ValueError` naming the first parameter or buffer of `module` (loaded from `source`) with NaN/Inf.

    A diverged or corrupted checkpoint would otherwise surface much later, as NaN embeddings or a failing solver.
    """
    for name, tensor in chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_floating_point():
            bad = ~torch.isfinite(tensor.detach())
            if bad.any():
                raise ValueError(
                    f"{source}: weight {name!r} holds {int(bad.sum())} NaN/Inf value(s) of {tensor.numel()}; "
                    "expected finite weights (a diverged or corrupted checkpoint?)."
                )
