"""Permuting token windows on the fly: `TokenPermuter` turns per-sample permutations into one gather index into the
flat token buffer (docs/method.md#departures-at-a-glance)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..layout import TokenLayout
from .spec import AxisPermutation, Permutations, PermutationSpec


logger = logging.getLogger(__name__)


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
        index = torch.empty((batch_size * window_size, T), dtype=torch.long, device=tokens.device)
        torch.index_select(columns.view(batch_size * K, T), 0, local.view(-1), out=index)
        return index.view(batch_size, window_size, T).add_(row_base[..., None])

    # ------------------------------------------------------------------------------------------------- public API
    def sample_permutations(self, generator: torch.Generator | None, batch_size: int) -> Permutations:
        """One independent random permutation per group and sample (`torch.randperm` with `generator`).

        Returns:
            `dict[str, torch.LongTensor]`: group -> `[batch_size, size]`, on the generator's device.
        """
        return self.spec.random_permutations(generator, batch_size=batch_size)

    def permute_models(self, full_tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Each model's whole token sequence `[B, S, T]` under its own random function-preserving permutation.

        The test-time augmentation of embeddings and the augmentation of probe fine-tuning (docs/method.md#probes):
        `sample_permutations(generator, B)`, then `apply` to the full sequences (windows of all `S` tokens).
        """
        batch_size = full_tokens.shape[0]
        perms = self.sample_permutations(generator, batch_size=batch_size)
        start = torch.zeros(batch_size, dtype=torch.long)
        return self.apply(full_tokens, perms, start=start, window_size=self.layout.num_tokens)

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
        values = torch.empty((batch_size, window_size * T), dtype=full_tokens.dtype, device=device)
        torch.gather(source, 1, index.view(batch_size, -1), out=values)
        # Padding read a real value of its source row; a multiplication by the 0/1 mask makes it exactly zero (the
        # original's index-level permutation filled padding with the first weight, docs/method.md#departures-at-a-glance). It is
        # several times cheaper than `torch.where` on CPU.
        mask = torch.empty((batch_size * window_size, T), dtype=values.dtype, device=device)
        torch.index_select(self._mask(device, values.dtype), 0, tokens.view(-1), out=mask)
        return values.view(batch_size, window_size, T).mul_(mask.view(batch_size, window_size, T))

    def _mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The layout mask as 0/1 values of `dtype` on `device` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._masks:
            self._masks[key] = self.layout.mask.to(device=device, dtype=dtype)
        return self._masks[key]
