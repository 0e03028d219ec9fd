"""Permutation symmetries of zoo architectures: specs, random permutations, canonicalization, token windows.

Hidden units of a network can be reordered without changing the function it computes: permute the output rows of
one layer (its weight, bias and the BatchNorm that follows) and, with the same permutation, the input columns of the
layer that consumes them. SANE uses this symmetry twice:

* **canonicalization** (docs/method.md#canonicalization): every zoo member is mapped onto a reference checkpoint by git
  re-basin weight matching, so that the zoo lives in one "basin" of the symmetry;
* **augmentation** (docs/zoo_dataset_format.md, docs/method.md#objective): view 2 of a training pair is a randomly permuted copy of the model.

The original stores P=200 permuted copies of every window (docs/method.md#departures-at-a-glance). Here a permutation is applied
on the fly, inside the window only (docs/method.md#departures-at-a-glance): `TokenPermuter` turns per-sample permutations into one gather
index into the flat token buffer. Its padding slots point at a zero sentinel; the original's unused index-level
implementation mapped them to flat index 0, so padding received the first weight (docs/method.md#departures-at-a-glance).

Which groups exist and which axes they permute is derived from the architecture (`permutation_spec_from_module`),
not hand-written per model as in the original (`zoo_cnn_large_permutation_spec`, `resnet18_permutation_spec`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .layout import TokenLayout
from .memory import empty_hugepage


logger = logging.getLogger(__name__)

# A permutation dict maps a group name to a LongTensor `[size]` (one model) or `[batch, size]` (one per sample).
# Convention (as the original's `get_permuted_param`): permuted row r takes old row `perm[r]`, and the consuming
# layer's input column c takes old column `perm[c]`, i.e. new hidden unit c is old hidden unit `perm[c]`.
Permutations = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Deriving a spec from an architecture
# ---------------------------------------------------------------------------------------------------------------

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules that act on every channel (or feature) separately, so they commute with a permutation of the channels.
_CHANNELWISE_MODULES = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
)
_PARAMETRIZED_MODULES = (*_WEIGHT_LAYERS, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.PReLU)
_CHANNELWISE_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.elu,
    torch.nn.functional.selu,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.mish,
    torch.nn.functional.tanh,
    torch.nn.functional.sigmoid,
    torch.nn.functional.softplus,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool1d,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.max_pool3d,
    torch.nn.functional.avg_pool1d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.avg_pool3d,
    torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous"}
_FLATTEN = "flatten"
_CHANNELWISE = "channelwise"


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


def _flatten_sequential(sequential: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module | str]]:
    ops: list[tuple[str, nn.Module | str]] = []
    for name, child in sequential.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            ops.extend(_flatten_sequential(child, full))
        else:
            ops.append((full, child))
    return ops


def _chain_from_fx(model: nn.Module) -> list[tuple[str, nn.Module | str]]:
    """The forward of `model` as a chain of ops, traced with torch.fx; raises if it is not a single chain."""
    import torch.fx

    name = type(model).__name__
    # Name the first module whose parameters no rule covers (attention, embeddings, ...) before tracing, which
    # would fail later with a less helpful message.
    for prefix, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and not isinstance(module, _PARAMETRIZED_MODULES):
            raise ValueError(
                f"Cannot derive a permutation spec for {name}: module `{prefix}` ({type(module).__name__}) is not a "
                "Linear/Conv/BatchNorm/LayerNorm; its permutation symmetry is not known."
            )
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # any tracing failure means: not derivable automatically
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: it is not a ResNet of BasicBlocks, has no `module_list` "
            f"nn.Sequential, and torch.fx cannot trace its forward ({type(err).__name__}: {err})."
        ) from None
    ops: list[tuple[str, nn.Module | str]] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise ValueError(f"Cannot derive a permutation spec for {name}: its forward takes several inputs.")
            previous = node
            continue
        inputs = node.all_input_nodes
        if node.op == "output":
            if inputs != [previous]:
                raise ValueError(
                    f"Cannot derive a permutation spec for {name}: its forward does not return one chain."
                )
            break
        if inputs != [previous]:
            raise ValueError(
                f"Cannot derive a permutation spec for {name}: `{node.target}` (node {node.name}) does not just "
                "consume the previous result (residual connections, attention and multi-input ops are not "
                "supported; zoo ResNets are handled separately)."
            )
        if node.op == "call_module":
            ops.append((str(node.target), model.get_submodule(str(node.target))))
        elif node.op == "call_function" and node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ValueError(f"Cannot derive a permutation spec for {name}: torch.flatten with start_dim={start}.")
            ops.append((node.name, _FLATTEN))
        elif node.op == "call_method" and node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ValueError(f"Cannot derive a permutation spec for {name}: .flatten(start_dim={start}).")
            ops.append((node.name, _FLATTEN))
        elif (node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS) or (
            node.op == "call_method" and node.target in _CHANNELWISE_METHODS
        ):
            ops.append((node.name, _CHANNELWISE))
        else:
            raise ValueError(
                f"Cannot derive a permutation spec for {name}: unsupported op `{node.target}` (node {node.name})."
            )
        previous = node
    return ops


def _spec_from_chain(model: nn.Module, ops: list[tuple[str, nn.Module | str]], what: str) -> PermutationSpec:
    """Walk a chain of ops in forward order; every weight layer but the last opens a permutation group."""
    builder = _SpecBuilder(model)
    seen: set[int] = set()
    weight_layers = [
        i for i, (_, op) in enumerate(ops) if isinstance(op, nn.Module) and isinstance(op, _WEIGHT_LAYERS)
    ]
    if not weight_layers:
        raise ValueError(f"Cannot derive a permutation spec for {type(model).__name__}: no Linear/Conv layer found.")
    last = weight_layers[-1]
    current: str | None = None  # group of the channel / feature axis of the running activation (None: unpermuted)
    spatial = False  # channels on axis 1 followed by spatial axes (conv feature map) rather than flat features
    flattened_map = False  # the features are a flattened conv feature map (channel-major blocks)

    def blocked(prefix: str, module: nn.Module | str, reason: str) -> ValueError:
        kind = module if isinstance(module, str) else type(module).__name__
        return ValueError(
            f"Cannot derive a permutation spec for {type(model).__name__}: module `{prefix}` ({kind}) {reason}."
        )

    for index, (prefix, op) in enumerate(ops):
        if isinstance(op, nn.Module):
            if id(op) in seen and any(True for _ in op.parameters(recurse=False)):
                raise blocked(prefix, op, "is used twice; shared weights are not supported")
            seen.add(id(op))
        size = builder.groups[current] if current is not None else None
        if isinstance(op, nn.Linear):
            in_block = 1
            if current is not None:
                if spatial:
                    raise blocked(prefix, op, "acts on a conv feature map without a Flatten before it")
                if op.in_features % size or (op.in_features != size and not flattened_map):
                    raise blocked(prefix, op, f"has in_features={op.in_features}, but the previous layer has {size}")
                in_block = op.in_features // size
            out = None if index == last else builder.new_group(f"P_{prefix}", op.out_features)
            builder.add_module(prefix, op, out, current, in_block)
            current, spatial, flattened_map = out, False, False
        elif isinstance(op, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if op.groups != 1:
                raise blocked(prefix, op, f"is a grouped convolution (groups={op.groups})")
            if current is not None and not spatial:
                raise blocked(prefix, op, "follows flat features (a Linear or Flatten), not a conv feature map")
            if current is not None and op.in_channels != size:
                raise blocked(prefix, op, f"has in_channels={op.in_channels}, but the previous layer has {size}")
            out = None if index == last else builder.new_group(f"P_{prefix}", op.out_channels)
            builder.add_module(prefix, op, out, current)
            current, spatial, flattened_map = out, True, False
        elif isinstance(op, nn.modules.batchnorm._BatchNorm):
            if current is not None and op.num_features != size:
                raise blocked(prefix, op, f"has num_features={op.num_features}, but the previous layer has {size}")
            builder.add_module(prefix, op, current)
        elif isinstance(op, nn.LayerNorm):
            # Equivariant only when it normalizes exactly the permuted feature axis of flat features.
            if current is not None and (spatial or tuple(op.normalized_shape) != (size,)):
                raise blocked(prefix, op, "does not normalize exactly the permuted feature axis")
            builder.add_module(prefix, op, current)
        elif op == _FLATTEN or isinstance(op, nn.Flatten):
            if isinstance(op, nn.Flatten) and (op.start_dim != 1 or op.end_dim != -1):
                raise blocked(prefix, op, f"flattens dims {op.start_dim}..{op.end_dim}; only start_dim=1 is supported")
            if spatial:
                flattened_map = True
            spatial = False
        elif op == _CHANNELWISE or isinstance(op, _CHANNELWISE_MODULES):
            if isinstance(op, nn.Module) and any(True for _ in op.parameters(recurse=True)):
                raise blocked(prefix, op, "has parameters")
        elif isinstance(op, nn.PReLU):
            if current is not None and op.num_parameters != 1:
                raise blocked(prefix, op, "has one slope per channel")
            builder.add_module(prefix, op, None)
        else:
            has_state = any(True for _ in op.parameters()) or any(True for _ in op.buffers())
            if has_state or current is not None:
                raise blocked(prefix, op, "is not a Linear/Conv/BatchNorm/LayerNorm/Flatten or channel-wise module")
    return builder.build(what)


def _is_basic_block_resnet(model: nn.Module) -> bool:
    return (
        isinstance(getattr(model, "conv1", None), nn.Conv2d)
        and isinstance(getattr(model, "fc", None), nn.Linear)
        and isinstance(getattr(model, "layer1", None), nn.Sequential)
    )


def _resnet_spec(model: nn.Module) -> PermutationSpec:
    """ResNet of BasicBlocks (torchvision keys): residual-tied groups plus one inner group per block (SANE §2.5).

    The residual stream `x + block(x)` forces every block output of a stage, the stage input (the stem or the previous
    stage's last block) and the shortcut to share one permutation, unless a `downsample` conv re-maps the shortcut;
    then a new residual group starts. Group names are `P_res0`, `P_res1`, ... (the original's `P_bg0..3`) and
    `P_<block>.inner` for a block's conv1 → conv2 channels.
    """
    builder = _SpecBuilder(model)
    name = type(model).__name__
    bn1 = getattr(model, "bn1", None)
    if not isinstance(bn1, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"Cannot derive a permutation spec for {name}: `bn1` is not a BatchNorm.")
    current = builder.new_group("P_res0", model.conv1.out_channels)
    builder.add_module("conv1", model.conv1, current)
    builder.add_module("bn1", bn1, current)
    stage = 1
    while isinstance(getattr(model, f"layer{stage}", None), nn.Sequential):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            prefix = f"layer{stage}.{index}"
            if hasattr(block, "conv3"):
                raise ValueError(
                    f"Cannot derive a permutation spec for {name}: `{prefix}` is a Bottleneck block (conv3); only "
                    "BasicBlock ResNets are supported."
                )
            parts = [getattr(block, part, None) for part in ("conv1", "bn1", "conv2", "bn2")]
            if not (isinstance(parts[0], nn.Conv2d) and isinstance(parts[2], nn.Conv2d)):
                raise ValueError(f"Cannot derive a permutation spec for {name}: `{prefix}` is not a BasicBlock.")
            conv1, bn_1, conv2, bn_2 = parts
            inner = builder.new_group(f"P_{prefix}.inner", conv1.out_channels)
            builder.add_module(f"{prefix}.conv1", conv1, inner, current)
            builder.add_module(f"{prefix}.bn1", bn_1, inner)
            downsample = getattr(block, "downsample", None)
            if downsample is None:
                out = current
                if conv2.out_channels != builder.groups[current]:
                    raise ValueError(
                        f"Cannot derive a permutation spec for {name}: `{prefix}` changes the width without a "
                        "downsample shortcut."
                    )
            else:
                out = builder.new_group(
                    f"P_res{len([g for g in builder.groups if g.startswith('P_res')])}", conv2.out_channels
                )
                for child_name, child in downsample.named_children():
                    if isinstance(child, nn.Conv2d):
                        builder.add_module(f"{prefix}.downsample.{child_name}", child, out, current)
                    else:
                        builder.add_module(f"{prefix}.downsample.{child_name}", child, out)
            builder.add_module(f"{prefix}.conv2", conv2, out, inner)
            builder.add_module(f"{prefix}.bn2", bn_2, out)
            current = out
        stage += 1
    # Global average pooling keeps one feature per channel, so `fc` inputs follow the last residual group.
    size = builder.groups[current]
    if model.fc.in_features % size:
        raise ValueError(f"Cannot derive a permutation spec for {name}: fc.in_features is not a multiple of {size}.")
    builder.add_module("fc", model.fc, None, current, model.fc.in_features // size)
    return builder.build("ResNet structure (conv1, bn1, layer1.., fc)")


# transformers model families whose blocks `_transformer_spec` knows: absolute position embeddings, one key/value
# head per query head, no rotary embedding (which pairs query/key dimensions, so they could not move freely).
TRANSFORMER_FAMILIES = ("bert", "gpt2", "vit")


def _transformers_config(model: nn.Module):
    """The config of `model`, or of the transformers model it wraps (e.g. the zoo's `ViTClassifier`); else None."""
    for module in (model, *model.children()):
        config = getattr(module, "config", None)
        if isinstance(getattr(config, "model_type", None), str) and hasattr(module, "base_model_prefix"):
            return config
    return None


def _is_conv1d(module: nn.Module | None) -> bool:
    """transformers' `Conv1D` (GPT-2): a Linear whose weight is stored `[in, out]`."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _transformer_spec(model: nn.Module) -> PermutationSpec:
    """Attention heads and feed-forward units of a BERT, ViT or GPT-2 model (docs/method.md#transformer-symmetries).

    Per attention module: a query/key group (rows of the query and key projections), a value/output group (rows of
    the value projection, columns of the output projection) and a `HeadGroup` over both, so whole heads move together
    and, inside a head, the query/key and the value/output dimensions are permuted freely. Per feed-forward block: one
    group for its hidden units. GPT-2's fused `c_attn` (`Conv1D`, `[in, 3 * hidden]`) is a concatenated group
    `[query/key | query/key | value/output]`. The residual stream (embeddings, LayerNorms, pooler, classifier, tied
    LM head) is not permuted; docs/method.md#transformer-symmetries says why.
    """
    config = _transformers_config(model)
    name = type(model).__name__
    family = config.model_type
    if family not in TRANSFORMER_FAMILIES:
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: the symmetries of transformers model_type {family!r} are "
            f"not known; supported families: {', '.join(TRANSFORMER_FAMILIES)}."
        )
    position = getattr(config, "position_embedding_type", "absolute")
    if position not in (None, "absolute") or getattr(config, "add_cross_attention", False):
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: position_embedding_type={position!r}, "
            f"add_cross_attention={getattr(config, 'add_cross_attention', False)!r}; expected absolute position "
            "embeddings and no cross-attention."
        )
    num_heads = config.num_attention_heads
    builder = _SpecBuilder(model)
    heads: dict[str, HeadGroup] = {}
    concat: dict[str, tuple[str, ...]] = {}

    def attention(prefix: str, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, fused: bool) -> None:
        qk_size = q.weight.shape[1] // 3 if fused else q.out_features
        vo_size = o.weight.shape[0] if fused else o.in_features
        if qk_size % num_heads or vo_size % num_heads:
            raise ValueError(
                f"Cannot derive a permutation spec for {name}: attention `{prefix}` has {qk_size} query/key and "
                f"{vo_size} value units, not multiples of num_attention_heads={num_heads}."
            )
        qk = builder.new_group(f"P_{prefix}.qk", qk_size)
        vo = builder.new_group(f"P_{prefix}.vo", vo_size)
        heads[f"H_{prefix}"] = HeadGroup(groups=(qk, vo), num_heads=num_heads)
        if fused:  # Conv1D: axis 1 of the weight and axis 0 of the bias are the outputs
            qkv = builder.new_group(f"P_{prefix}.c_attn", 2 * qk_size + vo_size)
            concat[qkv] = (qk, qk, vo)
            builder.axes[f"{prefix}.c_attn.weight"] = AxisPermutation(in_group=qkv)
            builder.axes[f"{prefix}.c_attn.bias"] = AxisPermutation(out_group=qkv)
            builder.axes[f"{prefix}.c_proj.weight"] = AxisPermutation(out_group=vo)
            return
        for module, group in ((q, qk), (k, qk), (v, vo)):
            builder.add_module(module_names[module], module, group)
        builder.add_module(module_names[o], o, None, vo)

    def feed_forward(up: nn.Module, down: nn.Module, prefix: str) -> None:
        group = f"P_{prefix}" if prefix.endswith(".mlp") else f"P_{prefix}.mlp"
        if _is_conv1d(up):
            hidden = builder.new_group(group, up.weight.shape[1])
            builder.axes[f"{module_names[up]}.weight"] = AxisPermutation(in_group=hidden)
            builder.axes[f"{module_names[up]}.bias"] = AxisPermutation(out_group=hidden)
            builder.axes[f"{module_names[down]}.weight"] = AxisPermutation(out_group=hidden)
            return
        hidden = builder.new_group(group, up.out_features)
        builder.add_module(module_names[up], up, hidden)
        builder.add_module(module_names[down], down, None, hidden)

    module_names = {module: prefix for prefix, module in model.named_modules()}
    for prefix, module in model.named_modules():
        children = dict(module.named_children())
        projections = [children.get(c) for c in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if family == "vit" and all(isinstance(p, nn.Linear) for p in projections):
            attention(prefix, *projections, fused=False)
        elif family == "vit" and all(isinstance(children.get(c), nn.Linear) for c in ("fc1", "fc2")):
            feed_forward(children["fc1"], children["fc2"], prefix)
        elif family == "bert" and {"self", "output"} <= set(children) and hasattr(children["self"], "query"):
            self_attention, output = children["self"], children["output"]
            attention(prefix, self_attention.query, self_attention.key, self_attention.value, output.dense, False)
        elif family == "bert" and {"attention", "intermediate", "output"} <= set(children):
            feed_forward(children["intermediate"].dense, children["output"].dense, prefix)
        elif family == "gpt2" and _is_conv1d(children.get("c_attn")) and _is_conv1d(children.get("c_proj")):
            attention(prefix, children["c_attn"], None, None, children["c_proj"], fused=True)
        elif family == "gpt2" and _is_conv1d(children.get("c_fc")) and _is_conv1d(children.get("c_proj")):
            feed_forward(children["c_fc"], children["c_proj"], prefix)
    if not heads:
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: no attention module of the {family} family was found."
        )
    # Everything else reads or writes the residual stream, which stays in place.
    for key, value in builder.state_dict.items():
        if value.is_floating_point() and key not in builder.axes:
            builder.axes[key] = AxisPermutation()
    return PermutationSpec(groups=dict(builder.groups), axes=dict(builder.axes), heads=heads, concat=concat)


def permutation_spec_from_module(model: nn.Module) -> PermutationSpec:
    """Derive the permutation symmetries of an architecture from its modules.

    Supported:

    * transformers models of the BERT, ViT and GPT-2 families (`TRANSFORMER_FAMILIES`): attention heads moved whole,
      query/key and value/output dimensions inside each head, feed-forward hidden units
      (docs/method.md#transformer-symmetries).
    * ResNets of BasicBlocks with torchvision's attribute names (`ResNet18`/`ResNet34` of the zoos, torchvision's
      `resnet18`/`resnet34`): residual-tied groups, one inner group per block, BatchNorm parameters and running
      statistics following their conv, `fc` inputs following the last stage (docs/method.md#canonicalization).
    * Chains of Conv1d/2d/3d / Linear layers with channel-wise modules in between (activations, pooling, dropout,
      BatchNorm, LayerNorm over the features, Flatten): a model's `module_list` `nn.Sequential` (the zoo `CNNSmall`,
      `CNN3`, `MLP`), any `nn.Sequential`, or a module whose forward torch.fx traces into such a chain. Every weight
      layer but the last gets a group for its outputs; a Flatten between a conv and a Linear gives the Linear an
      input block of `h * w` (docs/method.md#canonicalization). The last layer's outputs are never permuted.

    Args:
        model (`nn.Module`): the architecture (its weights are not read, only shapes and structure).

    Raises:
        `ValueError`: naming the module that blocks the derivation (attention, residual connections in a generic
        module, grouped convs, unknown modules between permuted layers, ...).
    """
    if _transformers_config(model) is not None:
        return _transformer_spec(model)
    if _is_basic_block_resnet(model):
        return _resnet_spec(model)
    module_list = getattr(model, "module_list", None)
    if isinstance(module_list, nn.Sequential):
        return _spec_from_chain(model, _flatten_sequential(module_list, "module_list"), "`module_list` chain")
    if isinstance(model, nn.Sequential):
        return _spec_from_chain(model, _flatten_sequential(model, ""), "nn.Sequential chain")
    return _spec_from_chain(model, _chain_from_fx(model), "torch.fx-traced chain")


# ---------------------------------------------------------------------------------------------------------------
# Permuting state_dicts (the plain, reference way) and weight matching
# ---------------------------------------------------------------------------------------------------------------


def _block_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Expand a permutation of `n` units to the `n * block` entries they own (unit c owns a contiguous block)."""
    if block == 1:
        return perm
    return (perm[..., :, None] * block + torch.arange(block, device=perm.device)).flatten(-2)


def _permute_tensor(
    tensor: torch.Tensor, axis: AxisPermutation, perms: Permutations, skip_axis: int | None = None
) -> torch.Tensor:
    if axis.out_group is not None and skip_axis != 0:
        tensor = tensor.index_select(0, perms[axis.out_group].to(tensor.device))
    if axis.in_group is not None and skip_axis != 1:
        tensor = tensor.index_select(1, _block_index(perms[axis.in_group].to(tensor.device), axis.in_block))
    return tensor


def permute_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Permutations
) -> dict[str, torch.Tensor]:
    """Apply one permutation per group to a checkpoint (the un-tokenized reference path, docs/method.md#canonicalization).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the checkpoint.
        spec (`PermutationSpec`): its permutation spec.
        perms (`dict[str, torch.Tensor]`): one LongTensor `[size]` per group; permuted row r is old row `perm[r]`.

    Returns:
        A new dict in the same key order. Permuted tensors are new; keys no group acts on keep their tensor objects.
    """
    missing = [g for g in spec.groups if g not in perms]
    if missing:
        raise ValueError(f"Missing permutations for groups {missing}.")
    result = {}
    for key, value in state_dict.items():
        axis = spec.axes.get(key)
        result[key] = value if axis is None else _permute_tensor(value, axis, perms)
    return result


def _unit_rows(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """`tensor` as `[size, -1]`: one row per unit of the group acting on `axis` (blocks of axis 1 included)."""
    if axis == 0:
        return tensor.reshape(size, -1)
    return tensor.reshape(tensor.shape[0], size, -1).transpose(0, 1).reshape(size, -1)


def weight_matching(
    spec: PermutationSpec,
    reference_sd: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    init_perms: Permutations | None = None,
) -> Permutations:
    """Git re-basin weight matching (Ainsworth et al. 2023; docs/method.md#canonicalization): permutations that bring `sd` to
    `reference_sd`.

    Coordinate descent: visit the groups (a head group as one unit) in random order; for a group of size n, build
    `C = sum over its (key, axis) of A_key[axis as rows] @ B_key[axis as rows, other axes permuted].T` and solve the
    linear assignment `max_perm sum_i C[i, perm[i]]` (`scipy.optimize.linear_sum_assignment(maximize=True)`). Stop
    when a full sweep improves no group by more than 1e-12 (the original's threshold), or after `max_iter` sweeps.

    Args:
        spec (`PermutationSpec`): the architecture's spec.
        reference_sd (`Mapping[str, torch.Tensor]`): the reference checkpoint (SANE §6.2 / §2.5).
        sd (`Mapping[str, torch.Tensor]`): the checkpoint to match.
        max_iter (`int`, *optional*, defaults to 100): maximum number of sweeps over all groups.
        generator (`torch.Generator`, *optional*): orders the groups in every sweep (mainly used for testing purposes).
        init_perms (`dict[str, torch.Tensor]`, *optional*): starting point; defaults to the identity.

    Returns:
        `dict[str, torch.Tensor]`: one LongTensor `[size]` per group, such that `permute_state_dict(sd, spec, perms)`
        is aligned with `reference_sd`.
    """
    from scipy.optimize import linear_sum_assignment

    spec.validate(reference_sd)
    spec.validate(sd)
    perms = {g: p.clone().cpu() for g, p in (init_perms or spec.identity_permutations()).items()}
    spec.fill_concatenated(perms)
    group_axes = spec.group_axes
    reference = {k: v.detach().cpu().double() for k, v in reference_sd.items() if k in spec.axes}
    other = {k: v.detach().cpu().double() for k, v in sd.items() if k in spec.axes}
    # Concatenated groups are not matched themselves: their axes add the diagonal blocks of their cost to the cost
    # of each part (a part's unit i is unit offset + i of the concatenation).
    segments: dict[str, list[tuple[str, int]]] = {name: [] for name in spec.groups}
    for name, parts in spec.concat.items():
        offset = 0
        for part in parts:
            segments[part].append((name, offset))
            offset += spec.groups[part]

    def own_cost(name: str) -> torch.Tensor:
        size = spec.groups[name]
        cost = torch.zeros(size, size, dtype=torch.float64)
        for key, axis in group_axes[name]:
            a = _unit_rows(reference[key], axis, size)
            b = _unit_rows(_permute_tensor(other[key], spec.axes[key], perms, skip_axis=axis), axis, size)
            cost += a @ b.T
        return cost

    def group_cost(name: str) -> torch.Tensor:
        cost = own_cost(name)
        size = spec.groups[name]
        for concatenated, offset in segments[name]:
            cost += own_cost(concatenated)[offset : offset + size, offset : offset + size]
        return cost

    def assign(cost: torch.Tensor) -> tuple[torch.Tensor, float]:
        rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
        return torch.from_numpy(cols.astype(np.int64)), float(cost[rows, cols].sum())

    # Units of the coordinate descent: every free group alone, and every head group as one unit (heads are matched
    # with the best within-head matching of every pair of heads as their score, then the within-head matchings of the
    # chosen pairs are kept; docs/method.md#transformer-symmetries).
    in_heads = {group for head in spec.heads.values() for group in head.groups}
    units: list[str | HeadGroup] = [g for g in spec.groups if g not in in_heads and g not in spec.concat]
    units += list(spec.heads.values())
    for iteration in range(max_iter):
        progress = False
        for unit_index in torch.randperm(len(units), generator=generator, device="cpu").tolist():
            unit = units[unit_index]
            if isinstance(unit, str):
                cost = group_cost(unit)
                new_perm, new_score = assign(cost)
                old_score = cost[torch.arange(spec.groups[unit]), perms[unit]].sum().item()
                new_perms = {unit: new_perm}
            else:
                costs = {group: group_cost(group) for group in unit.groups}
                old_score = sum(c[torch.arange(c.shape[0]), perms[g]].sum().item() for g, c in costs.items())
                n = unit.num_heads
                pair_score = torch.zeros(n, n, dtype=torch.float64)
                within: dict[tuple[str, int, int], torch.Tensor] = {}
                for group, cost in costs.items():
                    b = spec.groups[group] // n
                    for h in range(n):
                        for g in range(n):
                            within[group, h, g], score = assign(cost[h * b : (h + 1) * b, g * b : (g + 1) * b])
                            pair_score[h, g] += score
                head_perm, new_score = assign(pair_score)
                new_perms = {
                    group: torch.cat(
                        [
                            head_perm[h] * (spec.groups[group] // n) + within[group, h, int(head_perm[h])]
                            for h in range(n)
                        ]
                    )
                    for group in unit.groups
                }
            if new_score > old_score + 1e-12:
                progress = True
                perms.update(new_perms)
                spec.fill_concatenated(perms)
        if not progress:
            logger.debug("weight_matching converged after %d sweep(s)", iteration + 1)
            break
    else:
        logger.info("weight_matching stopped after max_iter=%d sweeps without converging", max_iter)
    return perms


def canonicalize(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    reference: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    return_permutations: bool = False,
) -> list[dict[str, torch.Tensor]] | tuple[list[dict[str, torch.Tensor]], list[Permutations]]:
    """Map every checkpoint onto `reference` with `weight_matching` (docs/method.md#canonicalization, `map_to_canonical=True`).

    The original matches a model's *last* epoch and applies that permutation to all its epochs; do that with
    `perms = weight_matching(spec, reference, epochs[-1])` and `permute_state_dict(sd, spec, perms)` per epoch.

    Args:
        state_dicts (`Sequence[Mapping[str, torch.Tensor]]`): the checkpoints.
        reference (`Mapping[str, torch.Tensor]`): the reference checkpoint.
        spec (`PermutationSpec`): their permutation spec.
        max_iter (`int`, *optional*, defaults to 100): see `weight_matching`.
        generator (`torch.Generator`, *optional*): see `weight_matching`.
        return_permutations (`bool`, *optional*, defaults to `False`): also return the permutation of each model.

    Returns:
        The canonicalized checkpoints (and, optionally, their permutations).
    """
    canonical, all_perms = [], []
    for state_dict in state_dicts:
        perms = weight_matching(spec, reference, state_dict, max_iter=max_iter, generator=generator)
        canonical.append(permute_state_dict(state_dict, spec, perms))
        all_perms.append(perms)
    return (canonical, all_perms) if return_permutations else canonical


# ---------------------------------------------------------------------------------------------------------------
# Permuting token windows on the fly
# ---------------------------------------------------------------------------------------------------------------

_HUGEPAGE_MIN_BYTES = 4 << 20


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.empty`, backed by transparent huge pages for large CPU buffers (see `sane_hf.tokenization.memory`).

    The window index and values are fresh multi-megabyte buffers on every batch; with 4 KiB pages the kernel's page
    faults cost more than the gathers that fill them. `empty_hugepage` covers float dtypes; int64 is added here.
    """
    if dtype == torch.int64 and device.type == "cpu" and math.prod(shape) * 8 >= _HUGEPAGE_MIN_BYTES:
        return torch.from_numpy(np.empty(shape, dtype=np.int64))
    return empty_hugepage(shape, dtype, device)


class TokenPermuter:
    """Applies per-sample permutations to token windows with one gather (docs/method.md#departures-at-a-glance "Permutations").

    A permutation moves whole rows inside a layer (permuted row r is old row `perm_out[r]`, all its chunks) and, inside
    every row, the input-channel blocks of the layer's weight (block c is old block `perm_in[c]`, where the block of
    an input channel is `weight_width / size(in_group)` values: `kh * kw` for a conv, `h * w` for a Linear after a
    flattened conv map). The bias column and the padding stay in place. A permuted slot therefore always reads from
    the same layer, and the token layout, mask and positions of a window do not change (docs/zoo_dataset_format.md).

    Everything is precomputed once: per token its layer base slot, row stride, out-group pointer and "chunk type",
    and per chunk type (one per `(layer, chunk of a row)`; the column map of a token depends on its layer and chunk,
    not on its row) the input-group pointer, block width and offset of every column. A batch then costs one small
    gather of the permutations for the chunk types a window can touch, one row gather per window token and one
    gather of the values; nothing loops over layers or samples, and nothing syncs with the device except the range
    check of `start`.

    Args:
        layout (`TokenLayout`): the token layout of the architecture.
        spec (`PermutationSpec`): its permutation spec (e.g. `permutation_spec_from_module(model)`); must cover
            every tokenized key of the layout.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf import TokenLayout
    >>> from sane_hf.tokenization.permutations import TokenPermuter, permutation_spec_from_module
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> layout = TokenLayout.from_module(model, token_size=4)
    >>> permuter = TokenPermuter(layout, permutation_spec_from_module(model))
    >>> tokens = layout.tokenize(model.state_dict())[0][None]  # [1, S, T]
    >>> perms = permuter.sample_permutations(torch.Generator().manual_seed(0), batch_size=1)
    >>> permuter.apply(tokens, perms, start=torch.tensor([0]), window_size=layout.num_tokens).shape
    torch.Size([1, 8, 4])
    ```
    """

    def __init__(self, layout: TokenLayout, spec: PermutationSpec):
        self.layout = layout
        self.spec = spec
        T, S = layout.token_size, layout.num_tokens
        self.num_slots = S * T
        missing = [layer.weight_key for layer in layout.layers if layer.weight_key not in spec.axes]
        if missing:
            raise ValueError(
                f"The permutation spec does not match the token layout: it lacks the tokenized keys {missing[:5]}."
            )
        tokenized = {layer.weight_key for layer in layout.layers}
        tokenized |= {layer.bias_key for layer in layout.layers if layer.bias_key is not None}
        untokenized = [k for k, a in spec.axes.items() if k not in tokenized and (a.out_group or a.in_group)]
        if untokenized:
            # With ignore_bn / tokenize_bn_stats=False those values come from the reference on detokenize, so the
            # permuted model is then not function-preserving (the original's ignore_bn augmentation did the same).
            logger.info("Keys permuted by the spec but not tokenized (left as they are): %s", untokenized[:5])

        # Pointers into the concatenated permutations: every group, then an identity segment for unpermuted rows.
        self.group_offsets: dict[str, int] = {}
        offset = 0
        for name, size in spec.groups.items():
            self.group_offsets[name] = offset
            offset += size
        self.identity_offset = offset
        self.identity_size = max(layer.num_rows for layer in layout.layers)

        per_token: dict[str, list[np.ndarray]] = {k: [] for k in ("base", "out_ptr", "stride", "type", "type_lo")}
        per_token |= {"type_hi": [], "layer_lo": [], "layer_hi": []}
        per_type: dict[str, list[np.ndarray]] = {"in_ptr": [], "mul": [], "add_self": [], "add_sentinel": []}
        num_types = 0
        for layer in layout.layers:
            axis = spec.axes[layer.weight_key]
            # A row is an output channel: axis 0 of the weight, or axis 1 of a transposed (`Conv1D`, `[in, out]`)
            # weight, whose input channels are then axis 0 and never blocked.
            row_group, column_group = axis.out_group, axis.in_group
            if layer.transposed:
                if axis.in_block != 1:
                    raise ValueError(
                        f"Layer {layer.name!r} is stored [in, out]; its spec has in_block={axis.in_block}, expected 1."
                    )
                row_group, column_group = axis.in_group, axis.out_group
            if layer.bias_key is not None:
                bias_group = spec.axes.get(layer.bias_key, AxisPermutation()).out_group
                if bias_group != row_group:
                    raise ValueError(
                        f"Bias {layer.bias_key!r} and weight {layer.weight_key!r} are permuted differently."
                    )
            if row_group is not None and spec.groups[row_group] != layer.num_rows:
                raise ValueError(
                    f"Layer {layer.name!r} has {layer.num_rows} rows but its group {row_group!r} has "
                    f"{spec.groups[row_group]} units."
                )
            f, R, n = layer.tokens_per_row, layer.num_rows, layer.num_tokens
            rows = np.repeat(np.arange(R, dtype=np.int64), f)
            out_base = self.group_offsets[row_group] if row_group is not None else self.identity_offset
            per_token["base"].append(np.full(n, layer.token_offset * T, dtype=np.int64))
            per_token["out_ptr"].append(out_base + rows)
            per_token["stride"].append(np.full(n, f * T, dtype=np.int64))
            per_token["type"].append(num_types + np.tile(np.arange(f, dtype=np.int64), R))
            per_token["type_lo"].append(np.full(n, num_types, dtype=np.int64))
            per_token["type_hi"].append(np.full(n, num_types + f, dtype=np.int64))
            per_token["layer_lo"].append(np.full(n, layer.token_offset, dtype=np.int64))
            per_token["layer_hi"].append(np.full(n, layer.token_offset + n, dtype=np.int64))
            num_types += f

            # Column j of a row reads column `concat[in_ptr[j]] * mul[j] + add[j]` of the source row.
            j = np.arange(f * T, dtype=np.int64)
            in_ptr = np.full(f * T, self.identity_offset, dtype=np.int64)  # any entry: multiplied by mul = 0
            mul = np.zeros(f * T, dtype=np.int64)
            add = j.copy()
            if column_group is not None:
                n_in = spec.groups[column_group]
                if layer.weight_width % n_in:
                    raise ValueError(
                        f"Layer {layer.name!r}: row width {layer.weight_width} is not a multiple of the size {n_in} "
                        f"of its input group {column_group!r}."
                    )
                block = layer.weight_width // n_in
                weight = j < layer.weight_width
                in_ptr[weight] = self.group_offsets[column_group] + j[weight] // block
                mul[weight] = block
                add[weight] = j[weight] % block
            # Padding reads column 0 of the source row (always a real, finite value) and `apply` multiplies it by
            # 0. For the index with a sentinel it reads `S*T` instead: every row base is >= 0, so base + S*T >= S*T
            # and `clamp_max(S*T)` lands on the sentinel exactly (the original mapped padding to index 0,
            # docs/method.md#departures-at-a-glance).
            padding = j >= layer.row_width
            add[padding] = 0
            mul[padding] = 0
            add_sentinel = add.copy()
            add_sentinel[padding] = self.num_slots
            per_type["in_ptr"].append(in_ptr)
            per_type["mul"].append(mul)
            per_type["add_self"].append(add)
            per_type["add_sentinel"].append(add_sentinel)

        self.num_chunk_types = num_types
        token = {k: torch.from_numpy(np.concatenate(v)) for k, v in per_token.items()}
        chunk = {k: torch.from_numpy(np.concatenate(v)).view(num_types, T) for k, v in per_type.items()}
        self._tables_cpu = {
            **{f"token_{k}": v for k, v in token.items()},
            # One packed [C, 3, T] table per variant, so a batch selects its chunk types with a single copy.
            "chunk_self": torch.stack([chunk["in_ptr"], chunk["mul"], chunk["add_self"]], dim=1),
            "chunk_sentinel": torch.stack([chunk["in_ptr"], chunk["mul"], chunk["add_sentinel"]], dim=1),
        }
        self._masks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._types_per_window: dict[int, int] = {}

    # ---------------------------------------------------------------------------------------------------- helpers
    def _on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables_cpu.items()}
        return self._tables[device]

    def _max_types(self, window_size: int) -> int:
        """Most chunk types any window of `window_size` tokens can touch: from the first type of its first layer to
        the last type of its last layer. Static per window size, so no device sync is needed to size the batch."""
        if window_size not in self._types_per_window:
            tables, S = self._tables_cpu, self.layout.num_tokens
            spans = tables["token_type_hi"][window_size - 1 :] - tables["token_type_lo"][: S - window_size + 1]
            self._types_per_window[window_size] = int(spans.max())
        return self._types_per_window[window_size]

    def _concat(self, perms: Permutations, batch_size: int, device: torch.device) -> torch.Tensor:
        missing = [g for g in self.spec.groups if g not in perms]
        if missing:
            raise ValueError(f"Missing permutations for groups {missing}.")
        parts = [perms[g].to(device=device, dtype=torch.long) for g in self.spec.groups]
        for name, part in zip(self.spec.groups, parts):
            if tuple(part.shape) != (batch_size, self.spec.groups[name]):
                raise ValueError(
                    f"Permutation of group {name!r} must have shape [{batch_size}, {self.spec.groups[name]}], "
                    f"got {list(part.shape)}."
                )
        identity = torch.arange(self.identity_size, device=device).expand(batch_size, -1)
        return torch.cat([*parts, identity], dim=1)

    def _window_tokens(self, start: torch.Tensor, window_size: int, batch_size: int) -> torch.Tensor:
        S = self.layout.num_tokens
        if not isinstance(start, torch.Tensor) or start.ndim != 1 or start.shape[0] != batch_size:
            found = list(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            raise ValueError(f"`start` must be a tensor of shape [{batch_size}], got {found}.")
        if not isinstance(window_size, int) or not 1 <= window_size <= S:
            raise ValueError(f"`window_size` must be an int in [1, {S}], got {window_size!r}.")
        if bool(((start < 0) | (start > S - window_size)).any()):
            raise ValueError(f"Window starts must be in [0, {S - window_size}] for window_size={window_size}.")
        return start.long()[:, None] + torch.arange(window_size, device=start.device)

    def _index(
        self, perms: Permutations, tokens: torch.Tensor, sentinel: bool, offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Flat source slot of every slot of the windows whose token ids are `tokens` `[B, W]`, plus `offset[b]`."""
        tables = self._on(tokens.device)
        batch_size, window_size = tokens.shape
        T, K = self.layout.token_size, self._max_types(window_size)
        concat = self._concat(perms, batch_size, tokens.device)
        arange_b = torch.arange(batch_size, device=tokens.device)[:, None]
        # Column maps of the K chunk types from the first type of each window's first layer on: [B, K, T].
        first_type = tables["token_type_lo"][tokens[:, 0]]
        types = (first_type[:, None] + torch.arange(K, device=tokens.device)).clamp_max_(self.num_chunk_types - 1)
        chunk = tables["chunk_sentinel" if sentinel else "chunk_self"].index_select(0, types.view(-1))  # [B*K, 3, T]
        chunk = chunk.view(batch_size, K, 3, T)
        columns = concat.gather(1, chunk[:, :, 0].reshape(batch_size, K * T)).view(batch_size, K, T)
        columns = columns.mul_(chunk[:, :, 1]).add_(chunk[:, :, 2])
        # Source row start of every window token: layer base + permuted row * row stride.
        permuted_row = concat.gather(1, tables["token_out_ptr"][tokens])
        row_base = tables["token_base"][tokens] + permuted_row * tables["token_stride"][tokens]  # [B, W]
        if offset is not None:
            row_base += offset[:, None]
        local = tables["token_type"][tokens] - first_type[:, None] + arange_b * K
        index = _empty((batch_size * window_size, T), torch.long, tokens.device)
        torch.index_select(columns.view(batch_size * K, T), 0, local.view(-1), out=index)
        return index.view(batch_size, window_size, T).add_(row_base[..., None])

    # ------------------------------------------------------------------------------------------------- public API
    def sample_permutations(self, generator: torch.Generator | None, batch_size: int) -> Permutations:
        """One independent random permutation per group and sample (`torch.randperm` with `generator`).

        Returns:
            `dict[str, torch.LongTensor]`: group -> `[batch_size, size]`, on the generator's device.
        """
        return self.spec.random_permutations(generator, batch_size=batch_size)

    def identity_permutations(self, batch_size: int, device: torch.device | str | None = None) -> Permutations:
        """The identity for every group, `[batch_size, size]` (a permuted window then equals the plain window)."""
        return self.spec.identity_permutations(batch_size, device=device)

    def permuted_token_index(self, perms: Permutations, start: torch.Tensor, window_size: int) -> torch.Tensor:
        """Gather index of permuted windows into the flat token sequence followed by a zero sentinel.

        Args:
            perms (`dict[str, torch.Tensor]`): group -> `[B, size]` permutations.
            start (`torch.LongTensor` of shape `(B,)`): window starts (in tokens).
            window_size (`int`): window length `W`.

        Returns:
            `torch.LongTensor` of shape `(B, W, T)` with values in `[0, S*T]`: gathering
            `cat([full_tokens.view(B, S*T), zeros(B, 1)], 1)` with it gives the permuted windows. Every padding slot
            is `S*T`, the zero sentinel.
        """
        tokens = self._window_tokens(start, window_size, start.shape[0])
        return self._index(perms, tokens, sentinel=True).clamp_max_(self.num_slots)

    def required_token_range(self, start: torch.Tensor, window_size: int) -> torch.Tensor:
        """Token range `[lo, hi)` per sample that a permuted window reads from: the whole layers it overlaps.

        A loader that does not want to ship all `S` tokens of every model (62 MB for a ResNet-18) can pass just that
        range of each model to `apply`, with `source_start=lo`.

        Returns:
            `torch.LongTensor` of shape `(B, 2)`.
        """
        tables = self._on(start.device)
        tokens = self._window_tokens(start, window_size, start.shape[0])
        return torch.stack([tables["token_layer_lo"][tokens[:, 0]], tables["token_layer_hi"][tokens[:, -1]]], dim=1)

    def apply(
        self,
        full_tokens: torch.Tensor,
        perms: Permutations,
        start: torch.Tensor,
        window_size: int,
        source_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Permuted token windows `[B, W, T]`, read from the full (unpermuted) token sequences.

        Args:
            full_tokens (`torch.Tensor` of shape `(B, S, T)`): each sample's whole token sequence (rows of a
                permuted window come from outside the window); or, with `source_start`, a slice `(B, S', T)` of it
                starting at token `source_start[b]` that covers `required_token_range(start, window_size)`.
            perms (`dict[str, torch.Tensor]`): group -> `[B, size]` (e.g. `sample_permutations`).
            start (`torch.LongTensor` of shape `(B,)`): window starts.
            window_size (`int`): window length `W`.
            source_start (`torch.LongTensor` of shape `(B,)`, *optional*): see `full_tokens`.

        Returns:
            `torch.Tensor` of shape `(B, W, T)`, dtype of `full_tokens`. Padding is exactly zero whatever
            `full_tokens` holds there. With identity permutations it equals the plain window.
        """
        T, S = self.layout.token_size, self.layout.num_tokens
        if not isinstance(full_tokens, torch.Tensor) or full_tokens.ndim != 3 or full_tokens.shape[-1] != T:
            found = list(full_tokens.shape) if isinstance(full_tokens, torch.Tensor) else type(full_tokens).__name__
            raise ValueError(f"`full_tokens` must have shape [B, S, {T}], got {found}.")
        batch_size = full_tokens.shape[0]
        device = full_tokens.device
        tokens = self._window_tokens(start.to(device), window_size, batch_size)
        if full_tokens.stride(2) != 1 or full_tokens.stride(1) != T:
            full_tokens = full_tokens.contiguous()
        if source_start is None:
            if full_tokens.shape[1] != S:
                raise ValueError(f"`full_tokens` must hold all {S} tokens (or pass `source_start`).")
            offset = None
        else:
            source_start = source_start.to(device).long()
            tables = self._on(device)
            lo, hi = tables["token_layer_lo"][tokens[:, 0]], tables["token_layer_hi"][tokens[:, -1]]
            if bool(((lo < source_start) | (hi > source_start + full_tokens.shape[1])).any()):
                raise ValueError("`full_tokens` does not cover `required_token_range(start, window_size)`.")
            offset = -source_start * T
        index = self._index(perms, tokens, sentinel=False, offset=offset)
        # A [B, S'*T] view of the storage with the input's batch stride: expanded (stride 0) or batch-sliced inputs
        # need no copy (`reshape` would copy them).
        source = full_tokens.as_strided(
            (batch_size, full_tokens.shape[1] * T), (full_tokens.stride(0), 1), full_tokens.storage_offset()
        )
        values = _empty((batch_size, window_size * T), full_tokens.dtype, device)
        torch.gather(source, 1, index.view(batch_size, -1), out=values)
        # Padding read a real value of its source row; a multiplication by the 0/1 mask makes it exactly zero (the
        # original's index-level permutation filled padding with the first weight, docs/method.md#departures-at-a-glance). It is
        # several times cheaper than `torch.where` on CPU.
        mask = _empty((batch_size * window_size, T), values.dtype, device)
        torch.index_select(self._mask(device, values.dtype), 0, tokens.view(-1), out=mask)
        return values.view(batch_size, window_size, T).mul_(mask.view(batch_size, window_size, T))

    def _mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The layout mask as 0/1 values of `dtype` on `device` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._masks:
            self._masks[key] = self.layout.mask.to(device=device, dtype=dtype)
        return self._masks[key]
