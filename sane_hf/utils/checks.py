"""Checks of loaded artifacts and stored configurations that turn silent garbage into a clear error naming the file,
the tensor or the field."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


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


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header of a safetensors file (no tensor is read); a corrupt, truncated or
    non-safetensors file raises a `ValueError` naming it."""

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: corrupt or truncated safetensors file ({err}); expected the complete file save_pretrained wrote."
        ) from None


def check_weight_shapes(
    files: Iterable[str | os.PathLike], expected: Mapping[str, tuple[int, ...]], config_file: str | os.PathLike
) -> None:
    """Raise a `ValueError` when a tensor stored in the safetensors `files` has another shape than the model that
    `config_file` describes (`expected`: name -> shape) would give it, naming the config, the tensor and both
    shapes (a `config.json` edited or copied from another model)."""
    for file in files:
        for key, shape in safetensors_shapes(file).items():
            if key in expected and tuple(expected[key]) != shape:
                raise ValueError(
                    f"{config_file}: does not fit the weights in {file}: {key} is {list(shape)} there but "
                    f"{list(expected[key])} by the config; expected the config.json saved with these weights."
                )


def check_device(device: str | None, option: str = "device") -> None:
    """Raise a `ValueError` when `device` (e.g. `"cuda"`) is not a torch device or is not present on this machine,
    before any work starts (`None`: the caller picks one)."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"`{option}` {device!r} is not a torch device ({err}); expected e.g. 'cpu' or 'cuda:0'."
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ValueError(
                f"`{option}` {device!r}: this machine has {count} CUDA device(s) visible to torch; expected 'cpu' or "
                "a present GPU (or leave it unset to pick one)."
            )
