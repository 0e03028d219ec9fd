"""The permutation spec: which permutation groups a model has and which tensor axes each one permutes.

A spec is data (`to_dict`/`from_dict`). `permutation_spec_from_module` (`from_module.py`) derives it from an
architecture with `_SpecBuilder`; the state_dict permutations and weight matching (`matching.py`) and the on-the-fly
token permutations (`token_permuter.py`) apply it (docs/method.md#canonicalization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


# A permutation dict maps a group name to a LongTensor `[size]` (one model) or `[batch, size]` (one per sample).
# Convention (as the original's `get_permuted_param`): permuted row r takes old row `perm[r]`, and the consuming
# layer's input column c takes old column `perm[c]`, i.e. new hidden unit c is old hidden unit `perm[c]`.
Permutations = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AxisPermutation:
    """Which permutation groups act on one state_dict tensor.

    Args:
        out_group (`str`, *optional*): group permuting axis 0 (output channels / neurons / BatchNorm features).
        in_group (`str`, *optional*): group permuting axis 1 (input channels / features).
        in_block (`int`, *optional*, defaults to 1): axis 1 has `in_block * size(in_group)` entries and input unit
            `c` owns the contiguous block `[c * in_block, (c + 1) * in_block)`. This is the flattened conv feature
            map feeding a Linear (`in_features = C * h * w`, channel-major), the original's "block-wise expansion"
            (docs/method.md#canonicalization).
    """

    out_group: str | None = None
    in_group: str | None = None
    in_block: int = 1


@dataclass(frozen=True)
class HeadGroup:
    """Attention heads: groups whose units are `num_heads` contiguous blocks (one per head) that move as whole heads.

    A valid permutation of the groups draws one permutation of the heads, shared by all of `groups`, and inside every
    head one free permutation per group: new unit `h * b + i` of a group with blocks of `b` units is old unit
    `head[h] * b + within[h][i]` (docs/method.md#transformer-symmetries). For self-attention, `groups` is the
    query/key group (rows of the query and key projections) and the value/output group (rows of the value projection,
    columns of the output projection).

    Args:
        groups (`tuple[str, ...]`): the groups whose heads move together.
        num_heads (`int`): number of heads; every group's size is a multiple of it.
    """

    groups: tuple[str, ...]
    num_heads: int


@dataclass
class PermutationSpec:
    """The permutation groups of an architecture and the axes they act on (the original's `PermutationSpec`).

    Build it with `permutation_spec_from_module(model)`. Every floating-point state_dict entry is listed in `axes`,
    also when no group acts on it, so a spec can check that it covers a checkpoint.

    Most groups are free: any permutation of their units is a symmetry. Two kinds are constrained, for transformers
    (docs/method.md#transformer-symmetries): the groups of a `HeadGroup` (whole heads, then units inside each head),
    and concatenated groups, whose permutation is the concatenation of other groups' permutations (GPT-2's fused
    query/key/value projection, `[q | k | v]` rows). Every permutation dict holds all groups, the constrained ones
    included, so `permute_state_dict` and `TokenPermuter` treat every group alike.

    Args:
        groups (`dict[str, int]`): group name -> size (number of hidden units it permutes), in a fixed order.
        axes (`dict[str, AxisPermutation]`): state_dict key -> the groups acting on its axes 0 and 1.
        heads (`dict[str, HeadGroup]`, *optional*): head-group name -> its groups.
        concat (`dict[str, tuple[str, ...]]`, *optional*): group -> the groups whose permutations, each shifted by
            the sizes of those before it, make up its permutation.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.tokenization.permutations import permutation_spec_from_module, permute_state_dict
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> spec = permutation_spec_from_module(model)
    >>> spec.groups
    {'P_0': 3}
    >>> perms = spec.random_permutations(torch.Generator().manual_seed(0))
    >>> permuted = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> _ = permuted.load_state_dict(permute_state_dict(model.state_dict(), spec, perms))
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(model(x), permuted(x), atol=1e-6)
    True
    ```
    """

    groups: dict[str, int]
    axes: dict[str, AxisPermutation]
    heads: dict[str, HeadGroup] = field(default_factory=dict)
    concat: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, size in self.groups.items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"Permutation group {name!r} must have a positive int size, got {size!r}.")
        in_heads: set[str] = set()
        for name, head in self.heads.items():
            if not isinstance(head.num_heads, int) or head.num_heads < 1:
                raise ValueError(f"Head group {name!r} has num_heads={head.num_heads!r}; expected a positive int.")
            for group in head.groups:
                if group not in self.groups or group in self.concat or group in in_heads:
                    raise ValueError(
                        f"Head group {name!r} lists {group!r}; expected a free group of the spec that no other head "
                        "group lists."
                    )
                if self.groups[group] % head.num_heads:
                    raise ValueError(
                        f"Head group {name!r}: group {group!r} of size {self.groups[group]} does not split into "
                        f"{head.num_heads} heads."
                    )
                in_heads.add(group)
        for name, parts in self.concat.items():
            if name not in self.groups or any(p not in self.groups or p in self.concat for p in parts):
                raise ValueError(
                    f"Concatenated group {name!r} of {list(parts)}: expected groups of the spec that are not "
                    "concatenations themselves."
                )
            if sum(self.groups[p] for p in parts) != self.groups[name]:
                raise ValueError(
                    f"Concatenated group {name!r} has size {self.groups[name]}, but its parts {list(parts)} add up "
                    f"to {sum(self.groups[p] for p in parts)}."
                )
        for key, axis in self.axes.items():
            for group in (axis.out_group, axis.in_group):
                if group is not None and group not in self.groups:
                    raise ValueError(f"Key {key!r} refers to unknown permutation group {group!r}.")
            if not isinstance(axis.in_block, int) or axis.in_block < 1:
                raise ValueError(f"Key {key!r} has in_block={axis.in_block!r}; expected a positive int.")

    @property
    def group_axes(self) -> dict[str, list[tuple[str, int]]]:
        """Group name -> the `(key, axis)` pairs it permutes (the original's `perm_to_axes`)."""
        result: dict[str, list[tuple[str, int]]] = {name: [] for name in self.groups}
        for key, axis in self.axes.items():
            if axis.out_group is not None:
                result[axis.out_group].append((key, 0))
            if axis.in_group is not None:
                result[axis.in_group].append((key, 1))
        return result

    def validate(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise `ValueError` unless `state_dict` has every key of the spec with axis sizes that fit the groups."""
        for key, axis in self.axes.items():
            if key not in state_dict:
                raise ValueError(f"state_dict does not match the permutation spec: missing key {key!r}.")
            shape = tuple(state_dict[key].shape)
            if axis.out_group is not None and (not shape or shape[0] != self.groups[axis.out_group]):
                raise ValueError(
                    f"Key {key!r} of shape {list(shape)}: axis 0 should have {self.groups[axis.out_group]} entries "
                    f"(group {axis.out_group!r})."
                )
            if axis.in_group is not None:
                expected = self.groups[axis.in_group] * axis.in_block
                if len(shape) < 2 or shape[1] != expected:
                    raise ValueError(
                        f"Key {key!r} of shape {list(shape)}: axis 1 should have {expected} entries "
                        f"(group {axis.in_group!r} of size {self.groups[axis.in_group]} x block {axis.in_block})."
                    )
        uncovered = [k for k, v in state_dict.items() if v.is_floating_point() and k not in self.axes]
        if uncovered:
            raise ValueError(f"The permutation spec does not cover the state_dict keys {uncovered[:5]}.")

    def identity_permutations(
        self, batch_size: int | None = None, device: torch.device | str | None = None
    ) -> Permutations:
        """Identity permutation of every group: `[size]` each, or `[batch_size, size]`."""
        result = {}
        for name, size in self.groups.items():
            perm = torch.arange(size, device=device)
            result[name] = perm if batch_size is None else perm.expand(batch_size, size).clone()
        return result

    def random_permutations(
        self, generator: torch.Generator | None = None, batch_size: int | None = None
    ) -> Permutations:
        """A uniformly random symmetry: every free group `torch.randperm`, heads as described by `HeadGroup`.

        Returns `[size]` or `[batch_size, size]` per group; concatenated groups are filled from their parts.

        Args:
            generator (`torch.Generator`, *optional*): source of randomness (mainly used for testing purposes); the
                permutations are created on its device.
            batch_size (`int`, *optional*): draw one independent permutation per sample.
        """
        device = generator.device if generator is not None else None
        in_heads = {group for head in self.heads.values() for group in head.groups}
        result = {}
        for name, size in self.groups.items():
            if name in in_heads or name in self.concat:
                continue
            if batch_size is None:
                result[name] = torch.randperm(size, generator=generator, device=device)
            else:
                result[name] = torch.stack(
                    [torch.randperm(size, generator=generator, device=device) for _ in range(batch_size)]
                )
        batch = () if batch_size is None else (batch_size,)
        for head in self.heads.values():
            # Sorting i.i.d. uniforms draws uniform permutations, many at once.
            head_perm = torch.rand((*batch, head.num_heads), generator=generator, device=device).argsort(-1)
            for group in head.groups:
                block = self.groups[group] // head.num_heads
                within = torch.rand((*batch, head.num_heads, block), generator=generator, device=device).argsort(-1)
                result[group] = (head_perm[..., None] * block + within).flatten(-2)
        return self.fill_concatenated(result)

    def fill_concatenated(self, perms: Permutations) -> Permutations:
        """`perms` with every concatenated group set from its parts (in place, and returned)."""
        for name, parts in self.concat.items():
            offsets = np.cumsum([0] + [self.groups[p] for p in parts[:-1]]).tolist()
            perms[name] = torch.cat([perms[p] + offset for p, offset in zip(parts, offsets)], dim=-1)
        return perms

    def to_dict(self) -> dict:
        """JSON-serializable form (e.g. for a dataset's `meta/`)."""
        result = {
            "groups": dict(self.groups),
            "axes": {
                key: {"out_group": a.out_group, "in_group": a.in_group, "in_block": a.in_block}
                for key, a in self.axes.items()
            },
        }
        if self.heads:
            result["heads"] = {n: {"groups": list(h.groups), "num_heads": h.num_heads} for n, h in self.heads.items()}
        if self.concat:
            result["concat"] = {name: list(parts) for name, parts in self.concat.items()}
        return result

    @classmethod
    def from_dict(cls, data: Mapping) -> PermutationSpec:
        """Inverse of `to_dict`."""
        try:
            return cls(
                groups={str(k): int(v) for k, v in data["groups"].items()},
                axes={key: AxisPermutation(**value) for key, value in data["axes"].items()},
                heads={
                    name: HeadGroup(groups=tuple(value["groups"]), num_heads=int(value["num_heads"]))
                    for name, value in data.get("heads", {}).items()
                },
                concat={name: tuple(parts) for name, parts in data.get("concat", {}).items()},
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"Invalid permutation spec dict: {err}.") from None


class _SpecBuilder:
    """Collects groups and axes, one module at a time."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state_dict = model.state_dict()
        self.groups: dict[str, int] = {}
        self.axes: dict[str, AxisPermutation] = {}

    def new_group(self, name: str, size: int) -> str:
        if name in self.groups:
            raise ValueError(f"Permutation group {name!r} is defined twice (is a module used twice?).")
        self.groups[name] = size
        return name

    def add_module(
        self, prefix: str, module: nn.Module, out_group: str | None, in_group: str | None = None, in_block: int = 1
    ) -> None:
        """Register the float tensors of `module` (not recursing): `weight` gets both groups, the rest axis 0 only."""
        for leaf, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = f"{prefix}.{leaf}" if prefix else leaf
            if key not in self.state_dict or not tensor.is_floating_point():
                continue
            if leaf == "weight" and tensor.ndim >= 2:
                self.axes[key] = AxisPermutation(out_group, in_group, in_block)
            else:
                self.axes[key] = AxisPermutation(out_group if tensor.ndim >= 1 else None)

    def build(self, what: str) -> PermutationSpec:
        uncovered = [k for k, v in self.state_dict.items() if v.is_floating_point() and k not in self.axes]
        if uncovered:
            module = uncovered[0].rpartition(".")[0] or uncovered[0]
            raise ValueError(
                f"Cannot derive a permutation spec for {type(self.model).__name__}: the {what} does not reach "
                f"module `{module}` (state_dict keys {uncovered[:3]}), so its forward is more than that chain."
            )
        return PermutationSpec(groups=dict(self.groups), axes=dict(self.axes))
