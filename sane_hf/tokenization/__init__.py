"""Checkpoint <-> token sequence (docs/method.md#tokenization): layouts, per-layer normalization, permutations, and
the weight processor that bundles layout and normalization for a SANE."""

from .layout import (
    StateDictEntry,
    TokenizedLayer,
    TokenLayout,
    detect_batchnorm_modules,
    detect_transposed_weights,
)
from .normalization import TokenNormalization
from .permutations import (
    AxisPermutation,
    PermutationSpec,
    TokenPermuter,
    canonicalize,
    permutation_spec_from_module,
    permute_state_dict,
    weight_matching,
)
from .processing_sane import SaneProcessor


__all__ = [
    "AxisPermutation",
    "PermutationSpec",
    "SaneProcessor",
    "StateDictEntry",
    "TokenLayout",
    "TokenNormalization",
    "TokenPermuter",
    "TokenizedLayer",
    "canonicalize",
    "detect_batchnorm_modules",
    "detect_transposed_weights",
    "permutation_spec_from_module",
    "permute_state_dict",
    "weight_matching",
]
