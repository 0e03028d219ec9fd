"""The token layout of an architecture: which weights become which tokens, and back.

SANE (docs/method.md#tokenization) cuts a checkpoint into a sequence of tokens: every output channel / neuron of a layer is a
row (the bias appended as one more column), rows are split into tokens of width `token_size` with zero padding,
and every token carries a 3-coordinate position (global index, layer index, row index).

The original recomputes this mapping with Python loops on every call. Here it is computed once per architecture
into a `TokenLayout` (JSON-serializable), and both directions are two vectorized copies with cached indices:

* tokenize: concatenate the tensors into one flat buffer, gather every *full* token (one contiguous run of
  `token_size` weights) as a row of a sliding-window view of that buffer, then fill the few *partial* tokens (row
  tails, biases, BatchNorm rows) element by element.
* detokenize: the mirror image: every aligned chunk of the flat output that maps to one contiguous run of token
  slots is gathered as a row; the remaining chunks are filled element by element. The returned tensors are views
  into one freshly allocated buffer.

This file travels into every SANE Hub repository with the weight processor (`processing_sane.py`, for
`trust_remote_code`), so it imports only the standard library, numpy, torch, transformers and its siblings.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.utils import FEATURE_EXTRACTOR_NAME, cached_file


logger = logging.getLogger(__name__)

# Bumped whenever the JSON schema of a TokenLayout changes in a way older readers cannot parse.
LAYOUT_FORMAT_VERSION = 1
# A SANE's layout and normalization live in its weight processor's config (`preprocessor_config.json`, transformers'
# feature-extractor file); checkpoints saved before the processor existed carry them as two sidecar files.
SANE_LAYOUT_NAME = "sane_layout.json"
# `from_pretrained` options that locate a file in a folder or Hub repository (transformers' `cached_file`).
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")

# Layer kinds (SANE §1.1). A BatchNorm module yields up to three tokenized layers: [gamma|beta], running_mean,
# running_var.
KIND_WEIGHT = "weight"
KIND_BATCHNORM = "batchnorm"
KIND_RUNNING_MEAN = "running_mean"
KIND_RUNNING_VAR = "running_var"
KIND_TENSOR = "tensor"
LAYER_KINDS = (KIND_WEIGHT, KIND_BATCHNORM, KIND_RUNNING_MEAN, KIND_RUNNING_VAR, KIND_TENSOR)

_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {name!r} in token layout; expected one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


@dataclass(frozen=True)
class TokenizedLayer:
    """One tokenized layer: a weight-like tensor, optionally with a bias appended as the last column of each row.

    Args:
        name (`str`): the state_dict key of the layer's main tensor (e.g. `"layer1.0.conv1.weight"`).
        kind (`str`): one of `weight`, `batchnorm`, `running_mean`, `running_var`, `tensor`.
        weight_key (`str`): state_dict key whose rows form the layer.
        bias_key (`str`, *optional*): state_dict key appended as one extra column (SANE §1.2).
        num_rows (`int`): rows (output channels / neurons).
        row_width (`int`): values per row, the bias column included.
        tokens_per_row (`int`): `ceil(row_width / token_size)` (SANE §1.3).
        token_offset (`int`): index of the layer's first token in the sequence.
        transposed (`bool`, *optional*, defaults to `False`): the weight is stored `[in, out]` (transformers'
            `Conv1D`, e.g. GPT-2), so its rows (output channels) are its columns.
    """

    name: str
    kind: str
    weight_key: str
    bias_key: str | None
    num_rows: int
    row_width: int
    tokens_per_row: int
    token_offset: int
    transposed: bool = False

    @property
    def num_tokens(self) -> int:
        return self.num_rows * self.tokens_per_row

    @property
    def weight_width(self) -> int:
        return self.row_width - (self.bias_key is not None)


@dataclass(frozen=True)
class StateDictEntry:
    """Shape, dtype and role of one state_dict entry; `tokenized=False` entries are restored from the layout."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    tokenized: bool


@dataclass
class _Plan:
    """Cached copy plan of a layout (built once, see `TokenLayout._plan`).

    Every layer occupies a `[rows, tokens_per_row * T]` block of the token sequence; its weight rows fill the first
    `weight_width` columns, its bias the next one, and the rest is zero padding (SANE §1.3). Both directions are
    therefore strided block copies, issued for all layers at once through `torch._foreach_copy_`.
    """

    layer_slot: list[int]  # first token slot (s * T) of every layer
    weight_tensor: list[int]  # index of each layer's weight in the flat tensor order
    bias_tensor: list[int]  # index of each layer's bias, -1 if none
    aligned: list[bool]  # block == flattened weight (no bias, rows a multiple of T): contiguous both ways
    padded_layers: list[int]  # layers whose rows end with padding
    token_layer: torch.Tensor  # [S] layer index of each token


def detect_batchnorm_modules(module: nn.Module) -> list[str]:
    """Names of the BatchNorm modules (any `_BatchNorm`, e.g. BatchNorm1d/2d/3d, SyncBatchNorm) in `module`."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def detect_transposed_weights(module: nn.Module) -> list[str]:
    """Keys of weights stored `[in, out]`: those of transformers' `Conv1D` modules (GPT-2's attention and MLP)."""
    return [
        _join_key(name, "weight")
        for name, child in module.named_modules()
        if type(child).__name__ == "Conv1D" and getattr(child, "weight", None) is not None and child.weight.ndim == 2
    ]


def _tied_entries(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Entries that are views of exactly the same memory as an earlier entry (tied weights), mapped to it."""
    first_of: dict[tuple, str] = {}
    tied = {}
    for key, value in state_dict.items():
        if value.numel() == 0 or value.device.type == "meta":  # meta tensors have no memory to share
            continue
        identity = (
            value.device,
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            value.shape,
            value.stride(),
        )
        if identity in first_of:
            tied[key] = first_of[identity]
        else:
            first_of[identity] = key
    return tied


def _batchnorm_prefixes_from_keys(keys: Iterable[str]) -> set[str]:
    """BatchNorm modules recognized structurally: a module with both `running_mean` and `running_var` entries.

    This replaces the original's substring test (`"bn" in key`, SANE §1.1), which misfires on any key containing
    "bn" and misses BatchNorms named otherwise.
    """
    keys = set(keys)
    prefixes = set()
    for key in keys:
        if key.endswith(".running_mean") or key == "running_mean":
            prefix = key[: -len("running_mean")].rstrip(".")
            if (f"{prefix}.running_var" if prefix else "running_var") in keys:
                prefixes.add(prefix)
    return prefixes


def _split_key(key: str) -> tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf


def _join_key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _rows_of(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, values per row) of a tensor: one row per output channel / neuron (SANE §1.2)."""
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), int(math.prod(shape[1:]))


class TokenLayout:
    """How the state_dict of one architecture maps to a sequence of SANE tokens, and back (docs/method.md#tokenization).

    Build it once from a reference state_dict (or module) and reuse it for every checkpoint of that architecture.
    Every floating-point tensor is tokenized (Conv/Linear weights with their bias as an extra column, 1-d
    parameters such as LayerNorm as `[weight|bias]` rows, embeddings, attention projections, ...); BatchNorm
    modules give `[gamma|beta]`, `running_mean` and `running_var` layers. Integer buffers (`num_batches_tracked`,
    position ids) and, when disabled, BatchNorm running statistics are not tokenized: their reference values are
    stored in the layout and restored by `detokenize`. Weights stored `[in, out]` (transformers' `Conv1D`) are cut into
    rows of output channels like `nn.Linear`'s, and tied entries (one tensor under two keys, e.g. GPT-2's LM head) are
    tokenized once.

    Args:
        token_size (`int`): token width `T`.
        layers (`list[TokenizedLayer]`): the tokenized layers in sequence order.
        entries (`list[StateDictEntry]`): every state_dict entry, in state_dict order.
        passthrough (`dict[str, torch.Tensor]`): reference values of the entries that are not tokenized.
        tied (`dict[str, str]`, *optional*): entries that are the same tensor as an earlier entry (tied weights, e.g.
            GPT-2's `lm_head.weight` and `transformer.wte.weight`), mapped to that entry: tokenized once, restored
            from it by `detokenize`.
        tokenize_bn_stats (`bool`): whether BatchNorm running statistics are tokenized.
        ignore_bn (`bool`): whether BatchNorm modules were left out of the tokens entirely (the original's
            `ignore_bn=True`).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf import TokenLayout
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> layout = TokenLayout.from_module(model, token_size=4)
    >>> layout.num_tokens, layout.num_layers  # 3 rows of 4+1 values -> 2 tokens each; 2 rows of 3+1 -> 1 each
    (8, 2)
    >>> tokens, mask, positions = layout.tokenize(model.state_dict())
    >>> restored = layout.detokenize(tokens)
    >>> all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
    True
    ```
    """

    def __init__(
        self,
        token_size: int,
        layers: list[TokenizedLayer],
        entries: list[StateDictEntry],
        passthrough: dict[str, torch.Tensor] | None = None,
        tokenize_bn_stats: bool = True,
        ignore_bn: bool = False,
        tied: Mapping[str, str] | None = None,
    ):
        if not isinstance(token_size, int) or isinstance(token_size, bool) or token_size < 1:
            raise ValueError(f"`token_size` must be a positive int, got {token_size!r}.")
        if not layers:
            raise ValueError("A token layout needs at least one tokenized layer; the state_dict has no float tensor.")
        self.token_size = token_size
        self.layers = list(layers)
        self.entries = list(entries)
        self.passthrough = dict(passthrough or {})
        self.tied = dict(tied or {})
        self.tokenize_bn_stats = tokenize_bn_stats
        self.ignore_bn = ignore_bn
        self._entry_by_key = {e.key: e for e in self.entries}
        for layer in self.layers:
            if layer.kind not in LAYER_KINDS:
                raise ValueError(
                    f"Layer {layer.name!r} has unknown kind {layer.kind!r}; expected one of {LAYER_KINDS}."
                )
        missing = [
            e.key for e in self.entries if not e.tokenized and e.key not in self.passthrough and e.key not in self.tied
        ]
        if missing:
            raise ValueError(f"Token layout lacks reference values for non-tokenized entries {missing}.")
        untied = [
            k for k, source in self.tied.items() if k not in self._entry_by_key or source not in self._entry_by_key
        ]
        if untied:
            raise ValueError(f"Token layout ties entries {untied} to keys it does not have.")
        self._transposed_keys = {layer.weight_key for layer in self.layers if layer.transposed}
        # Flat buffer order: for each layer its weight then its bias (the order `tokenize` concatenates them in).
        self._flat_keys: list[str] = []
        for layer in self.layers:
            self._flat_keys.append(layer.weight_key)
            if layer.bias_key is not None:
                self._flat_keys.append(layer.bias_key)
        self._flat_numels = [math.prod(self._entry_by_key[k].shape) for k in self._flat_keys]
        self._numel_by_key = dict(zip(self._flat_keys, self._flat_numels))
        self._flat_offsets = np.concatenate([[0], np.cumsum(self._flat_numels)]).astype(np.int64)
        self.num_values = int(self._flat_offsets[-1])
        tokenized_dtypes = {self._entry_by_key[k].dtype for k in self._flat_keys}
        self.token_dtype = torch.float32
        for dt in tokenized_dtypes:
            self.token_dtype = torch.promote_types(self.token_dtype, dt)
        self._needs_cast = any(dt != self.token_dtype for dt in tokenized_dtypes)
        self._cache: dict[str, object] = {}

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        token_size: int,
        tokenize_bn_stats: bool = True,
        ignore_bn: bool = False,
        batchnorm_modules: Iterable[str] | None = None,
        transposed_weights: Iterable[str] | None = None,
    ) -> TokenLayout:
        """Build the layout of a reference state_dict.

        Args:
            state_dict (`Mapping[str, torch.Tensor]`): a reference checkpoint; its key order defines the token order.
            token_size (`int`): token width `T` (288 for ResNet-18 and 289 for CNN3 in the paper).
            tokenize_bn_stats (`bool`, *optional*, defaults to `True`): tokenize BatchNorm `running_mean` and
                `running_var` (SANE); `False` keeps only `[gamma|beta]` (MZ-SANE) and restores the statistics from
                the reference.
            ignore_bn (`bool`, *optional*, defaults to `False`): leave BatchNorm modules out of the tokens entirely
                (the original's `ignore_bn=True`).
            batchnorm_modules (`Iterable[str]`, *optional*): names of the BatchNorm modules. Defaults to every
                module with both `running_mean` and `running_var` entries; `from_module` passes the modules whose
                type is a BatchNorm.
            transposed_weights (`Iterable[str]`, *optional*): keys of 2-d weights stored `[in, out]` (transformers'
                `Conv1D`); their rows are cut along output channels like every other weight. `from_module` passes the
                weights of `Conv1D` modules. An entry that shares its storage with an earlier one (tied weights) is
                tokenized once, under the earlier key.
        """
        if not isinstance(state_dict, Mapping) or not state_dict:
            raise ValueError(
                f"Expected a non-empty state_dict mapping keys to tensors, got {type(state_dict).__name__}."
            )
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, expected a torch.Tensor.")
        bn_prefixes = (
            set(batchnorm_modules) if batchnorm_modules is not None else _batchnorm_prefixes_from_keys(state_dict)
        )
        tied = _tied_entries(state_dict)
        transposed = set(transposed_weights or ())
        keys = [key for key in state_dict if key not in tied]
        key_set = set(keys)

        def is_float(key: str) -> bool:
            return state_dict[key].is_floating_point()

        def shape_of(key: str) -> tuple[int, ...]:
            shape = tuple(state_dict[key].shape)
            return shape[::-1] if key in transposed else shape

        def own_bias(prefix: str, rows: int) -> str | None:
            bias_key = _join_key(prefix, "bias")
            if bias_key in key_set and is_float(bias_key):
                bias = state_dict[bias_key]
                if bias.ndim == 1 and bias.shape[0] == rows:
                    return bias_key
            return None

        layers: list[TokenizedLayer] = []
        tokenized: set[str] = set()
        absorbed_biases: set[str] = set()
        # Biases are absorbed by their weight wherever they appear in the state_dict.
        for key in keys:
            prefix, leaf = _split_key(key)
            if leaf == "weight" and is_float(key):
                rows, _ = _rows_of(shape_of(key))
                bias_key = own_bias(prefix, rows)
                if bias_key is not None and not (ignore_bn and prefix in bn_prefixes):
                    absorbed_biases.add(bias_key)

        token_offset = 0
        for key in keys:
            if not is_float(key) or key in absorbed_biases:
                continue
            prefix, leaf = _split_key(key)
            in_bn = prefix in bn_prefixes
            if in_bn and ignore_bn:
                continue
            if in_bn and leaf in ("running_mean", "running_var"):
                if not tokenize_bn_stats:
                    continue
                kind = KIND_RUNNING_MEAN if leaf == "running_mean" else KIND_RUNNING_VAR
            elif leaf == "weight":
                kind = KIND_BATCHNORM if in_bn else KIND_WEIGHT
            else:
                kind = KIND_TENSOR
            rows, width = _rows_of(shape_of(key))
            bias_key = own_bias(prefix, rows) if leaf == "weight" else None
            if bias_key is not None and bias_key not in absorbed_biases:
                bias_key = None
            row_width = width + (bias_key is not None)
            tokens_per_row = math.ceil(row_width / token_size)
            layers.append(
                TokenizedLayer(
                    name=key,
                    kind=kind,
                    weight_key=key,
                    bias_key=bias_key,
                    num_rows=rows,
                    row_width=row_width,
                    tokens_per_row=tokens_per_row,
                    token_offset=token_offset,
                    transposed=key in transposed,
                )
            )
            token_offset += rows * tokens_per_row
            tokenized.add(key)
            if bias_key is not None:
                tokenized.add(bias_key)

        entries = [
            StateDictEntry(
                key=k, shape=tuple(state_dict[k].shape), dtype=state_dict[k].dtype, tokenized=k in tokenized
            )
            for k in state_dict
        ]
        passthrough = {k: state_dict[k].detach().cpu().clone() for k in keys if k not in tokenized}
        return cls(
            token_size=token_size,
            layers=layers,
            entries=entries,
            passthrough=passthrough,
            tokenize_bn_stats=tokenize_bn_stats,
            ignore_bn=ignore_bn,
            tied=tied,
        )

    @classmethod
    def from_module(
        cls, module: nn.Module, token_size: int, tokenize_bn_stats: bool = True, ignore_bn: bool = False
    ) -> TokenLayout:
        """Build the layout of `module.state_dict()`, detecting BatchNorm and `Conv1D` from the module types."""
        return cls.from_state_dict(
            module.state_dict(),
            token_size=token_size,
            tokenize_bn_stats=tokenize_bn_stats,
            ignore_bn=ignore_bn,
            batchnorm_modules=detect_batchnorm_modules(module),
            transposed_weights=detect_transposed_weights(module),
        )

    # ------------------------------------------------------------------------------------------------- properties
    @property
    def num_tokens(self) -> int:
        """Tokens per model `S`."""
        last = self.layers[-1]
        return last.token_offset + last.num_tokens

    @property
    def num_layers(self) -> int:
        """Tokenized layers (a BatchNorm module with statistics counts three)."""
        return len(self.layers)

    @property
    def keys(self) -> list[str]:
        """All state_dict keys, in state_dict order."""
        return [e.key for e in self.entries]

    @property
    def max_positions(self) -> list[int]:
        """Exclusive upper bound of each position coordinate; a SANE config needs `max_positions` >= this."""
        return [self.num_tokens, self.num_layers, max(layer.num_rows for layer in self.layers)]

    def layer_token_slices(self) -> list[slice]:
        """Token range of every layer."""
        return [slice(layer.token_offset, layer.token_offset + layer.num_tokens) for layer in self.layers]

    def __repr__(self) -> str:
        return (
            f"TokenLayout(num_tokens={self.num_tokens}, num_layers={self.num_layers}, token_size={self.token_size}, "
            f"num_values={self.num_values}, tokenize_bn_stats={self.tokenize_bn_stats}, ignore_bn={self.ignore_bn})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenLayout):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # ---------------------------------------------------------------------------------------------- cached arrays
    def _plan(self) -> _Plan:
        if "plan" not in self._cache:
            T = self.token_size
            tensor_index, weight_tensor, bias_tensor = 0, [], []
            for layer in self.layers:
                weight_tensor.append(tensor_index)
                bias_tensor.append(tensor_index + 1 if layer.bias_key is not None else -1)
                tensor_index += 1 + (layer.bias_key is not None)
            self._cache["plan"] = _Plan(
                layer_slot=[layer.token_offset * T for layer in self.layers],
                weight_tensor=weight_tensor,
                bias_tensor=bias_tensor,
                aligned=[
                    layer.bias_key is None and layer.row_width == layer.tokens_per_row * T for layer in self.layers
                ],
                padded_layers=[i for i, layer in enumerate(self.layers) if layer.row_width < layer.tokens_per_row * T],
                token_layer=torch.cat(
                    [torch.full((layer.num_tokens,), i, dtype=torch.long) for i, layer in enumerate(self.layers)]
                ),
            )
        return self._cache["plan"]

    def _block_views(self, slots: torch.Tensor, layer_ids: Iterable[int], part: str) -> list[torch.Tensor]:
        """Strided views of the `[B, rows, ...]` blocks of `slots` (`[B, S*T]`, contiguous rows) for some layers.

        `part` is `"weight"` (`[B, rows, weight_width]`), `"bias"` (`[B, rows]`) or `"padding"`.
        """
        plan = self._plan()
        batch_stride = slots.stride(0)
        base = slots.storage_offset()
        views = []
        for i in layer_ids:
            layer = self.layers[i]
            row_stride = layer.tokens_per_row * self.token_size
            start = base + plan.layer_slot[i]
            width = layer.weight_width
            if part == "weight":
                views.append(
                    slots.as_strided((slots.shape[0], layer.num_rows, width), (batch_stride, row_stride, 1), start)
                )
            elif part == "bias":
                views.append(
                    slots.as_strided((slots.shape[0], layer.num_rows), (batch_stride, row_stride), start + width)
                )
            else:
                padding = row_stride - layer.row_width
                views.append(
                    slots.as_strided(
                        (slots.shape[0], layer.num_rows, padding),
                        (batch_stride, row_stride, 1),
                        start + layer.row_width,
                    )
                )
        return views

    @property
    def mask(self) -> torch.Tensor:
        """`[S, T]` bool: True on real values, False on padding (SANE §1.3)."""
        if "mask" not in self._cache:
            # The slots `tokenize` copies into, filled block by block (no index of every real value).
            mask = torch.zeros(1, self.num_tokens * self.token_size, dtype=torch.bool)
            layers = range(len(self.layers))
            with_bias = [i for i in layers if self._plan().bias_tensor[i] >= 0]
            for block in self._block_views(mask, layers, "weight") + self._block_views(mask, with_bias, "bias"):
                block.fill_(True)
            self._cache["mask"] = mask.view(self.num_tokens, self.token_size)
        return self._cache["mask"]

    @property
    def positions(self) -> torch.Tensor:
        """`[S, 3]` long: (global token index, layer index, row index) of every token (SANE §1.4)."""
        if "positions" not in self._cache:
            rows = [
                np.repeat(np.arange(layer.num_rows, dtype=np.int64), layer.tokens_per_row) for layer in self.layers
            ]
            layer_index = self._plan().token_layer.numpy()
            positions = np.stack([np.arange(self.num_tokens), layer_index, np.concatenate(rows)], axis=1)
            self._cache["positions"] = torch.from_numpy(positions.astype(np.int64))
        return self._cache["positions"]

    @property
    def token_layer(self) -> torch.Tensor:
        """`[S]` long: the layer index of every token (`positions[:, 1]`)."""
        return self._plan().token_layer

    # ------------------------------------------------------------------------------------------------- validation
    def _collect(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[torch.Tensor], int | None]:
        """The tokenized tensors in flat order, validated; returns them and the batch size (None if unbatched)."""
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"Expected a state_dict (mapping of key to tensor), got {type(state_dict).__name__}.")
        batch_size: int | None = None
        batched: bool | None = None
        tensors = []
        for key in self._flat_keys:
            entry = self._entry_by_key[key]
            if key not in state_dict:
                raise ValueError(
                    f"state_dict does not match the token layout: missing key {key!r} "
                    f"(expected shape {list(entry.shape)}, dtype {_dtype_name(entry.dtype)})."
                )
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, expected a torch.Tensor.")
            shape = tuple(value.shape)
            if batched is None:
                batched = shape != entry.shape and shape[1:] == entry.shape
                batch_size = shape[0] if batched else None
            expected = (batch_size, *entry.shape) if batched else entry.shape
            if shape != expected:
                raise ValueError(
                    f"state_dict does not match the token layout: key {key!r} has shape {list(shape)}, "
                    f"expected {list(expected)}" + (" (with a leading batch dimension)" if batched else "") + "."
                )
            if value.dtype != entry.dtype:
                raise ValueError(
                    f"state_dict does not match the token layout: key {key!r} has dtype {_dtype_name(value.dtype)}, "
                    f"expected {_dtype_name(entry.dtype)}."
                )
            # A Conv1D weight `[in, out]` is read as `[out, in]`: rows are output channels, as for nn.Linear.
            tensors.append(value.detach().transpose(-1, -2) if key in self._transposed_keys else value.detach())
        known = set(self._entry_by_key)
        unexpected = [k for k in state_dict if k not in known]
        if unexpected:
            raise ValueError(
                f"state_dict does not match the token layout: unexpected key(s) {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}; the layout has {len(known)} keys, e.g. {self.keys[:3]}."
            )
        return tensors, batch_size

    def _raise_non_finite(self, tensors: list[torch.Tensor], batch_size: int | None) -> None:
        for key, value in zip(self._flat_keys, tensors):
            bad = ~torch.isfinite(value)
            if bad.any():
                where = ""
                if batch_size is not None:
                    where = f" in batch item(s) {torch.nonzero(bad.flatten(1).any(1)).flatten().tolist()[:10]}"
                raise ValueError(
                    f"state_dict entry {key!r} contains {int(bad.sum())} NaN/Inf value(s){where}; "
                    "expected finite weights (diverged checkpoint?)."
                )

    # ---------------------------------------------------------------------------------------------- the two maps
    def tokenize(
        self,
        state_dict: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
        *,
        check_finite: bool = True,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cut a checkpoint (or a batch of them) into tokens.

        Args:
            state_dict (`Mapping[str, Tensor]` or a list of them): one checkpoint, a batched checkpoint whose tensors
                carry a leading batch dimension, or a list of checkpoints (tokenized as a batch).
            check_finite (`bool`, *optional*, defaults to `True`): raise on NaN/Inf weights.
            out (`torch.Tensor`, *optional*): a preallocated `[S, T]` / `[B, S, T]` tensor of `token_dtype` to write
                into (reusing it avoids the page faults of a fresh allocation in tight loops).

        Returns:
            `(tokens, mask, positions)`: `[S, T]` float, `[S, T]` bool and `[S, 3]` long, each with a leading batch
            dimension for batched input (mask and positions are then expanded views).
        """
        if isinstance(state_dict, Sequence) and not isinstance(state_dict, Mapping):
            if len(state_dict) == 0:
                raise ValueError("Cannot tokenize an empty list of state_dicts.")
            items = [self._collect(sd) for sd in state_dict]
            if any(b is not None for _, b in items):
                raise ValueError("A list of state_dicts must hold unbatched checkpoints.")
            batch_size = len(items)
            # One stack per key (the only extra copy a list costs); the tokenization below is then batched.
            tensors = [torch.stack(ts) for ts in zip(*(ts for ts, _ in items))]
        else:
            tensors, batch_size = self._collect(state_dict)
        B = batch_size or 1
        T, S = self.token_size, self.num_tokens
        device = tensors[0].device
        plan = self._plan()
        if out is None:
            tokens = torch.empty((B, S, T), dtype=self.token_dtype, device=device)
        else:
            expected = (B, S, T) if batch_size is not None else (S, T)
            if tuple(out.shape) != expected or out.dtype != self.token_dtype or not out.is_contiguous():
                raise ValueError(
                    f"`out` must be a contiguous {self.token_dtype} tensor of shape {list(expected)}, "
                    f"got {out.dtype} {list(out.shape)}."
                )
            tokens = out.view(B, S, T)
        slots = tokens.view(B, S * T)
        layers = range(len(self.layers))
        with_bias = [i for i in layers if plan.bias_tensor[i] >= 0]
        destinations = self._block_views(slots, layers, "weight") + self._block_views(slots, with_bias, "bias")
        sources = [tensors[plan.weight_tensor[i]].reshape(B, self.layers[i].num_rows, -1) for i in layers]
        sources += [tensors[plan.bias_tensor[i]].reshape(B, -1) for i in with_bias]
        # Two fused calls for the whole model: zero the padding, copy every weight row and bias (SANE §1.2-1.3).
        torch._foreach_zero_(self._block_views(slots, plan.padded_layers, "padding"))
        torch._foreach_copy_(destinations, sources)
        # One read of the tokens (padding is zero); a finite sum that overflows only costs the exact per-key check.
        if check_finite and not torch.isfinite(tokens.sum()):
            self._raise_non_finite([t.reshape(B, -1) for t in tensors], batch_size)
        mask, positions = self.mask.to(device), self.positions.to(device)
        if batch_size is None:
            return tokens[0], mask, positions
        return tokens, mask.expand(B, S, T), positions.expand(B, S, 3)

    def clear_cache(self) -> None:
        """Free the cached copy plans, mask and positions (they are rebuilt on demand)."""
        self._cache.clear()

    def detokenize(
        self, tokens: torch.Tensor, *, reference: Mapping[str, torch.Tensor] | None = None, copy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Rebuild a state_dict (or a batched one) from tokens; the exact inverse of `tokenize`.

        Args:
            tokens (`torch.Tensor`): `[S, T]` or `[B, S, T]`. Values at padding positions are ignored.
            reference (`Mapping[str, Tensor]`, *optional*): where to take the non-tokenized entries
                (`num_batches_tracked`, integer buffers, untokenized BatchNorm statistics) from; defaults to the
                values stored in the layout.
            copy (`bool`, *optional*, defaults to `False`): by default, like `nn.Module.state_dict()`, tensors of
                aligned layers (no bias, rows a multiple of `token_size`: most ResNet convs) are zero-copy views of
                `tokens`, and the rest are views of one small new buffer. With `copy=True` every tensor is a view of
                one new buffer that does not alias `tokens`.

        Returns:
            `dict[str, torch.Tensor]` with the layout's keys in state_dict order, original shapes and dtypes (plus
            the leading batch dimension for batched input).
        """
        T, S = self.token_size, self.num_tokens
        if not isinstance(tokens, torch.Tensor) or tokens.ndim not in (2, 3) or tuple(tokens.shape[-2:]) != (S, T):
            found = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"Expected tokens of shape [{S}, {T}] or [B, {S}, {T}] for this layout, got {found}.")
        if not tokens.is_floating_point():
            raise ValueError(f"Expected floating-point tokens, got {tokens.dtype}.")
        batched = tokens.ndim == 3
        B = tokens.shape[0] if batched else 1
        plan = self._plan()
        slots = tokens.reshape(B, S * T)
        if slots.dtype != self.token_dtype or slots.stride(1) != 1:
            slots = slots.to(self.token_dtype).contiguous()
        layers = range(len(self.layers))
        # Layers copied into a new buffer: all of them, or (copy=False) those that are not one contiguous block.
        copied = [i for i in layers if copy or not plan.aligned[i]]
        if copy:
            copied_keys = self._flat_keys
        else:
            copied_keys = [self._flat_keys[plan.weight_tensor[i]] for i in copied]
            copied_keys += [self._flat_keys[plan.bias_tensor[i]] for i in copied if plan.bias_tensor[i] >= 0]
        sizes = [self._numel_by_key[k] for k in copied_keys]
        buffer = torch.empty((B, sum(sizes)), dtype=self.token_dtype, device=tokens.device)
        tensors = dict(zip(copied_keys, buffer.split(sizes, dim=1)))
        with_bias = [i for i in copied if plan.bias_tensor[i] >= 0]
        destinations = [
            tensors[self._flat_keys[plan.weight_tensor[i]]].view(B, self.layers[i].num_rows, -1) for i in copied
        ]
        destinations += [tensors[self._flat_keys[plan.bias_tensor[i]]] for i in with_bias]
        sources = self._block_views(slots, copied, "weight") + self._block_views(slots, with_bias, "bias")
        if destinations:
            torch._foreach_copy_(destinations, sources)
        if not copy:
            aligned = [i for i in layers if plan.aligned[i]]
            for i, view in zip(aligned, self._block_views(slots, aligned, "weight")):
                tensors[self._flat_keys[plan.weight_tensor[i]]] = view
        result: dict[str, torch.Tensor] = {}
        for entry in self.entries:
            if entry.key in self.tied:
                continue
            if entry.key in self._transposed_keys:
                value = tensors[entry.key].view(B, *entry.shape[::-1]).transpose(-1, -2).contiguous()
                if value.dtype != entry.dtype:
                    value = value.to(entry.dtype)
                result[entry.key] = value if batched else value[0]
            elif entry.tokenized:
                value = tensors[entry.key].view(B, *entry.shape)
                if value.dtype != entry.dtype:
                    value = value.to(entry.dtype)
                result[entry.key] = value if batched else value[0]
            else:
                value = reference[entry.key] if reference is not None and entry.key in reference else None
                if value is None:
                    value = self.passthrough[entry.key]
                value = value.to(tokens.device)
                result[entry.key] = value.expand(B, *entry.shape).clone() if batched else value.clone()
        # Tied entries are the same tensor as their source, as in the module they came from.
        return {entry.key: result[self.tied.get(entry.key, entry.key)] for entry in self.entries}

    # ------------------------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """A JSON-serializable description (docs/method.md#departures-at-a-glance "layout"), readable without `sane_hf`."""
        return {
            "format_version": LAYOUT_FORMAT_VERSION,
            "token_size": self.token_size,
            "tokenize_bn_stats": self.tokenize_bn_stats,
            "ignore_bn": self.ignore_bn,
            "num_tokens": self.num_tokens,
            "num_layers": self.num_layers,
            "num_values": self.num_values,
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "weight_key": layer.weight_key,
                    "bias_key": layer.bias_key,
                    "num_rows": layer.num_rows,
                    "row_width": layer.row_width,
                    "tokens_per_row": layer.tokens_per_row,
                    "token_offset": layer.token_offset,
                    # Written only when set, so layouts without Conv1D weights or tied entries read as before.
                    **({"transposed": True} if layer.transposed else {}),
                }
                for layer in self.layers
            ],
            "entries": [
                {"key": e.key, "shape": list(e.shape), "dtype": _dtype_name(e.dtype), "tokenized": e.tokenized}
                for e in self.entries
            ],
            "passthrough": {k: v.tolist() for k, v in self.passthrough.items()},
            **({"tied": dict(self.tied)} if self.tied else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> TokenLayout:
        """Inverse of `to_dict`; raises `ValueError` naming the field that is missing or wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"A token layout must be a JSON object, got {type(data).__name__}.")
        version = data.get("format_version")
        if version != LAYOUT_FORMAT_VERSION:
            raise ValueError(
                f"Token layout has format_version {version!r}; this sane_hf reads version {LAYOUT_FORMAT_VERSION}."
            )
        try:
            entries = [
                StateDictEntry(
                    key=e["key"],
                    shape=tuple(int(s) for s in e["shape"]),
                    dtype=_parse_dtype(e["dtype"]),
                    tokenized=bool(e["tokenized"]),
                )
                for e in data["entries"]
            ]
            by_key = {e.key: e for e in entries}
            layers = [
                TokenizedLayer(
                    **{k: layer[k] for k in TokenizedLayer.__dataclass_fields__ if k != "transposed"},
                    transposed=bool(layer.get("transposed", False)),
                )
                for layer in data["layers"]
            ]
            passthrough = {
                k: torch.tensor(v, dtype=by_key[k].dtype).reshape(by_key[k].shape)
                for k, v in data["passthrough"].items()
            }
            layout = cls(
                token_size=int(data["token_size"]),
                layers=layers,
                entries=entries,
                passthrough=passthrough,
                tokenize_bn_stats=bool(data["tokenize_bn_stats"]),
                ignore_bn=bool(data["ignore_bn"]),
                tied=data.get("tied"),
            )
        except KeyError as err:
            raise ValueError(f"Token layout is missing the field {err.args[0]!r}.") from None
        for field in ("num_tokens", "num_layers", "num_values"):
            if field in data and data[field] != getattr(layout, field):
                raise ValueError(
                    f"Token layout is inconsistent: {field} is {data[field]} but its layers give {getattr(layout, field)}."
                )
        return layout

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **hub_options) -> TokenLayout:
        """The layout of a SANE's weight processor, from a folder or Hub repository id (through the Hub cache, with
        `revision`, `subfolder`, `token`, ... as in transformers) or a JSON file; see `load_processor_part`."""
        return cls.from_dict(load_processor_part(source, "layout", SANE_LAYOUT_NAME, required=True, **hub_options))


def load_processor_part(
    source: str | os.PathLike, part: str, legacy_name: str, required: bool = False, **hub_options
) -> dict | None:
    """One part (`"layout"` or `"normalization"`) of a SANE weight processor's config, as a JSON dict.

    Args:
        source (`str` or `os.PathLike`): a JSON file (the processor config, or the part itself), or a folder or Hub
            repository id: its `preprocessor_config.json`, else the sidecar `legacy_name` of older checkpoints.
        part (`str`): the key of the part in the processor config.
        legacy_name (`str`): the sidecar file that held the part before the processor existed.
        required (`bool`, *optional*, defaults to `False`): raise `FileNotFoundError` instead of returning `None`.
        hub_options: options of transformers' `cached_file` (`HUB_OPTIONS`).

    Returns:
        `dict`, or `None` when the source holds neither file or its processor has no such part.
    """
    data = _find_processor_part(source, part, legacy_name, hub_options)
    if data is None and required:
        raise FileNotFoundError(
            f"No {part} in {source} (expected {FEATURE_EXTRACTOR_NAME} with a {part!r} entry, or {legacy_name})."
        )
    return data


def _find_processor_part(source: str | os.PathLike, part: str, legacy_name: str, hub_options: dict) -> dict | None:
    unknown = sorted(set(hub_options) - set(HUB_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown}; expected some of {list(HUB_OPTIONS)}.")
    path = Path(source)
    if path.is_file():
        data = _read_json_file(path)
        # A processor config holds the part under its key; a part's own file has its `format_version` on top.
        return data.get(part) if part in data and "format_version" not in data else data
    options = {key: value for key, value in hub_options.items() if value is not None}
    for filename in (FEATURE_EXTRACTOR_NAME, legacy_name):
        resolved = cached_file(
            os.fspath(source),
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_gated_repo=False,
            **options,
        )
        if resolved is not None:
            data = _read_json_file(Path(resolved))
            return data if filename == legacy_name else data.get(part)
    return None


def _read_json_file(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}.")
    return data
