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

One module per job:

* `spec.py`: `PermutationSpec` (groups, axes, head groups, concatenated groups) and the builder the derivations share;
* `conv_mlp.py`: specs of Conv/Linear chains (a `module_list`, an `nn.Sequential`, a torch.fx trace) and of ResNets;
* `transformer_heads.py`: specs of BERT, ViT and GPT-2 models (attention heads, feed-forward units);
* `from_module.py`: `permutation_spec_from_module`, which picks one of the two;
* `matching.py`: `permute_state_dict`, `weight_matching`, `canonicalize`;
* `token_permuter.py`: `TokenPermuter`, permutations applied to token windows.
"""

from .from_module import permutation_spec_from_module
from .matching import canonicalize, permute_state_dict, weight_matching
from .spec import AxisPermutation, HeadGroup, Permutations, PermutationSpec
from .token_permuter import TokenPermuter
from .transformer_heads import TRANSFORMER_FAMILIES


__all__ = [
    "TRANSFORMER_FAMILIES",
    "AxisPermutation",
    "HeadGroup",
    "PermutationSpec",
    "Permutations",
    "TokenPermuter",
    "canonicalize",
    "permutation_spec_from_module",
    "permute_state_dict",
    "weight_matching",
]
