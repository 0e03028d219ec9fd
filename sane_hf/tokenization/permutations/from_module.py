"""`permutation_spec_from_module`: the permutation symmetries of an architecture, read from its modules."""

from __future__ import annotations

from torch import nn

from .conv_mlp import _chain_from_fx, _flatten_sequential, _is_basic_block_resnet, _resnet_spec, _spec_from_chain
from .spec import PermutationSpec
from .transformer_heads import _transformer_spec, _transformers_config


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
