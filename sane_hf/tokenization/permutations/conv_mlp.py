"""Permutation specs of convolutional nets and MLPs: chains of Conv/Linear layers, and ResNets of BasicBlocks.

Every weight layer of a chain but the last gets a group for its outputs; a ResNet's residual stream ties the block
outputs of a stage into one group (SANE §2.5, docs/method.md#canonicalization).
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import PermutationSpec, _SpecBuilder


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
