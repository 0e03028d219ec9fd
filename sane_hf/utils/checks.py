"""Checks of loaded artifacts and stored configurations that turn silent garbage into a clear error naming the file,
the tensor or the field."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

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


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> tuple[list[str], str]:
    """The keys whose values differ between a stored and a requested configuration, and one line describing them
    (`"key: stored X, requested Y; ..."`), for errors that refuse to continue another configuration's work."""
    differing = sorted(key for key in set(stored) | set(requested) if stored.get(key) != requested.get(key))
    details = "; ".join(f"{key}: stored {stored.get(key)!r}, requested {requested.get(key)!r}" for key in differing)
    return differing, details


def weights_only_rejection(error: Exception) -> str:
    """The informative line of the error `torch.load(weights_only=True)` raises for a pickle it refuses.

    torch's message is long; its one telling line names what the pickle references (e.g. "Trying to load
    unsupported GLOBAL posix.system ...", or "Unsupported operand 149" for garbage).
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
