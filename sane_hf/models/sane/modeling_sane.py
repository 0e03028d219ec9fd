# Copyright 2026 The sane_hf developers. Licensed under the MIT license.
"""PyTorch SANE model: a sequential transformer autoencoder over weight tokens.

Reimplements the model of Schürholt, Mahoney, Borth, "Towards Scalable and Versatile Weight Space Learning"
(ICML 2024), following docs/method.md#model: per-token linear "tokenizer", a learned 3-coordinate position embedding shared
by encoder and decoder, nanoGPT-style pre-LN blocks without a final LayerNorm, a per-token linear bottleneck and a
projection head for the contrastive loss. Full token sequences (whole models) are embedded and decoded with haloed
windows (docs/method.md#windows-and-halos), reimplemented to work for every sequence length.

This file is copied verbatim into every Hub repository of a SANE checkpoint (`trust_remote_code`), so it may import
only the standard library, `torch`, `transformers` and, relatively, its sibling `configuration_sane.py`.
"""

import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_sane import SaneConfig


try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init


logger = logging.get_logger(__name__)

# Size and sha256 of every `*.safetensors` file `save_pretrained` wrote, which sane_hf's loaders verify.
SANE_CHECKSUMS_NAME = "sane_checksums.json"

_POSITION_COORDINATES = ("global token index", "layer index", "row index")
# Snippets per forward pass of the haloed methods when `batch_size` is not given. On CPU, a pass whose widest
# activation (the MLP's 4 * d_model hidden units) stays near 8 MB embeds a ResNet-18 faster than 64-snippet passes:
# large temporaries miss the cache and fault in fresh pages on every allocation (BENCHMARKS.md, "snippets per pass",
# has the measurement). Accelerators want large passes.
_CPU_PASS_ACTIVATIONS = 2**21
# Elements of one float32 copy per chunk of the CPU reduced-precision attention (`_CpuFlashAttentionFp32`).
_ATTENTION_CHUNK_ELEMENTS = 2**20
_ACCELERATOR_SNIPPETS_PER_PASS = 64


@dataclass
class SaneModelOutput(ModelOutput):
    r"""
    Output of [`SaneModel`] for a batch of token windows.

    Args:
        latents (`torch.FloatTensor` of shape `(batch_size, window_length, latent_dim)`):
            Per-token latent representations produced by the encoder.
        reconstructions (`torch.FloatTensor` of shape `(batch_size, window_length, token_size)`):
            Tokens reconstructed by the decoder from `latents`.
        projections (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            Output of the projection head on `latents`; only used by the contrastive loss.
        encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The encoder's input embedding and the output of each encoder block, each `(batch_size, window_length,
            d_model)`.
        decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The decoder's input embedding and the output of each decoder block.
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The attention weights of each encoder block, each `(batch_size, n_heads, window_length, window_length)`
            (softmax over the keys; padded keys get weight 0).
        decoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The attention weights of each decoder block.
    """

    latents: torch.FloatTensor | None = None
    reconstructions: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


def haloed_window_index(
    seq_len: int, content_size: int, halo_size: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Index of the haloed windows that cover a sequence of `seq_len` tokens (docs/method.md#windows-and-halos, made robust).

    The sequence is cut into `n_win = ceil(seq_len / content_size)` content windows; window `k` owns the tokens
    `[k * content_size, min((k + 1) * content_size, seq_len))`. Its snippet (what the model sees) is the range of
    length `min(seq_len, content_size + 2 * halo_size)` centred on the content with `halo_size` context tokens on each
    side, shifted to stay inside `[0, seq_len)`. Unlike the upstream `haloify`, which asserts that every snippet is
    full-length, this works for every `seq_len >= 1`, including `seq_len < content_size + 2 * halo_size` and
    `0 < seq_len % content_size < halo_size` (docs/method.md#departures-at-a-glance).

    Args:
        seq_len (`int`):
            Number of tokens `S` in the full sequence.
        content_size (`int`):
            Content tokens per window `W_c` (`config.window_size - 2 * config.halo_size`).
        halo_size (`int`):
            Context tokens `h` on each side of the content.
        device (`torch.device` or `str`, *optional*):
            Device of the returned tensors.

    Returns:
        `tuple(torch.LongTensor, torch.BoolTensor)`: `snippet_index` of shape `(n_win, snippet_len)` with the token
        indices of each snippet, and `content_mask` of the same shape, `True` where the snippet token is content of
        that window. Every token index in `[0, seq_len)` is content of exactly one window.
    """
    for name, value, minimum in (
        ("seq_len", seq_len, 1),
        ("content_size", content_size, 1),
        ("halo_size", halo_size, 0),
    ):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    seq_len, content_size, halo_size = int(seq_len), int(content_size), int(halo_size)
    n_windows = math.ceil(seq_len / content_size)
    snippet_len = min(seq_len, content_size + 2 * halo_size)

    window = torch.arange(n_windows, device=device)
    content_start = window * content_size
    content_end = torch.clamp(content_start + content_size, max=seq_len)
    # Centre the snippet on the content, then shift it back inside the sequence at both ends. The shifted snippet
    # still contains the whole content: at the left edge the content ends before content_size + 2h >= snippet_len,
    # at the right edge the snippet ends at seq_len.
    snippet_start = torch.clamp(content_start - halo_size, min=0, max=seq_len - snippet_len)
    snippet_index = snippet_start[:, None] + torch.arange(snippet_len, device=device)[None, :]
    content_mask = (snippet_index >= content_start[:, None]) & (snippet_index < content_end[:, None])
    return snippet_index, content_mask


class SanePositionEmbedding(nn.Module):
    """
    Learned 3-coordinate position embedding (docs/method.md#model): `concat(E1[global] + E2[layer], E3[row])`.

    Positions stay global, also inside a window, so `E1` must cover the longest model (docs/method.md#departures-at-a-glance).
    """

    def __init__(self, config: SaneConfig):
        super().__init__()
        half = config.d_model // 2
        self.max_positions = list(config.max_positions)
        self.global_embedding = nn.Embedding(config.max_positions[0], half)
        self.layer_embedding = nn.Embedding(config.max_positions[1], half)
        self.row_embedding = nn.Embedding(config.max_positions[2], half)

    def check_positions(self, positions: torch.Tensor) -> None:
        """Raise a `ValueError` if a coordinate of `positions` (`[..., 3]`) falls outside its position table."""
        if positions.numel() == 0 or torch.compiler.is_compiling():
            return
        # One aminmax over the flattened coordinates: a cheap reduction plus a single device sync.
        minima, maxima = positions.reshape(-1, 3).aminmax(dim=0)
        for i, (low, high) in enumerate(zip(minima.tolist(), maxima.tolist())):
            size = self.max_positions[i]
            if low < 0:
                raise ValueError(
                    f"position coordinate {i} ({_POSITION_COORDINATES[i]}) has a negative value ({low}); positions "
                    "must be >= 0."
                )
            if high >= size:
                raise ValueError(
                    f"position coordinate {i} ({_POSITION_COORDINATES[i]}) reaches {high} but "
                    f"config.max_positions[{i}] is {size}, so valid values are 0..{size - 1}. The model cannot embed "
                    "positions beyond its learned tables; use a SANE model trained with larger `max_positions`."
                )

    def forward(self, positions: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        positions = positions.long()
        if check_range:
            self.check_positions(positions)
        summed = self.global_embedding(positions[..., 0]) + self.layer_embedding(positions[..., 1])
        return torch.cat([summed, self.row_embedding(positions[..., 2])], dim=-1)


class _CpuFlashAttentionFp32(torch.autograd.Function):
    """Attention of bfloat16/float16 queries, keys and values on CPU through the float32 flash kernel.

    On CPU, the reduced-precision flash kernel is slow at SANE's small head dims (its backward runs at a fraction of
    the float32 one, BENCHMARKS.md "attention kernel"), while the float32 kernel is fast. This runs both directions in
    float32, a few samples at a time so the float32 copies stay small, and stores only what the reduced-precision
    kernel stores (inputs and output in their own dtype, float32 log-sum-exp): training memory does not grow.
    Outputs and gradients come back in the input dtype.
    """

    @staticmethod
    def _chunks(query: torch.Tensor) -> tuple[range, int]:
        # ~4 MB float32 per tensor and chunk
        step = max(1, _ATTENTION_CHUNK_ELEMENTS // max(1, query[0].numel()))
        return range(0, query.shape[0], step), step

    @staticmethod
    def forward(ctx, query, key, value, attn_mask):
        out = torch.empty_like(query, memory_format=torch.contiguous_format)
        logsumexp = query.new_empty(query.shape[:3], dtype=torch.float32)
        starts, step = _CpuFlashAttentionFp32._chunks(query)
        with torch.autocast("cpu", enabled=False):
            for start in starts:
                part = slice(start, start + step)
                mask = None if attn_mask is None else attn_mask[part] if attn_mask.shape[0] > 1 else attn_mask
                out_part, logsumexp[part] = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    query[part].float(), key[part].float(), value[part].float(), 0.0, False, attn_mask=mask
                )
                out[part] = out_part
        ctx.save_for_backward(query, key, value, out, logsumexp, attn_mask)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, logsumexp, attn_mask = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in (query, key, value)]
        starts, step = _CpuFlashAttentionFp32._chunks(query)
        with torch.autocast("cpu", enabled=False):
            for start in starts:
                part = slice(start, start + step)
                mask = None if attn_mask is None else attn_mask[part] if attn_mask.shape[0] > 1 else attn_mask
                parts = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    grad_out[part].float().contiguous(),
                    query[part].float(),
                    key[part].float(),
                    value[part].float(),
                    out[part].float(),
                    logsumexp[part],
                    0.0,
                    False,
                    attn_mask=mask,
                )
                for grad, grad_part in zip(grads, parts):
                    grad[part] = grad_part
        return (*grads, None)


def _attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Bidirectional scaled dot-product attention of `[B, H, L, d]` heads; `attn_mask` is a boolean key mask."""
    if (
        query.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float16)
        and dropout_p == 0.0
        and not torch.compiler.is_compiling()
    ):
        additive = None
        if attn_mask is not None:  # the flash kernel takes an additive float mask
            additive = torch.zeros(attn_mask.shape, dtype=torch.float32).masked_fill_(~attn_mask, float("-inf"))
        return _CpuFlashAttentionFp32.apply(query, key, value, additive)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=False)


def _eager_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same attention written out, returning `(output, weights)`: for `output_attentions=True` and
    `attn_implementation="eager"`. It stores the `[B, H, Q, K]` weights, which the fused kernels avoid."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return torch.matmul(F.dropout(weights, p=dropout_p), value), weights


class SaneSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with a fused QKV projection (docs/method.md#model, nanoGPT style)."""

    def __init__(self, config: SaneConfig):
        super().__init__()
        self.config = config  # read at run time: `attn_implementation` may be set after construction
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.c_proj.is_residual_projection = True  # scaled init, see SanePreTrainedModel._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        query_states: torch.Tensor | None = None,
        attentions_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from `query_states` (`[B, Q, D]`, default: every token of `hidden_states`) to `hidden_states`; with
        `attentions_out`, the attention weights are appended to it."""
        batch_size, length, width = hidden_states.shape
        if query_states is None:
            query, key, value = self.c_attn(hidden_states).split(width, dim=2)
        else:
            # Only some outputs are needed (the content of a haloed window): project queries for those tokens and
            # keys/values for all, with the same fused weights.
            weight_q, weight_kv = self.c_attn.weight.split([width, 2 * width])
            bias_q, bias_kv = (
                self.c_attn.bias.split([width, 2 * width]) if self.c_attn.bias is not None else (None,) * 2
            )
            query = F.linear(query_states, weight_q, bias_q)
            key, value = F.linear(hidden_states, weight_kv, bias_kv).split(width, dim=2)
        query, key, value = (
            t.view(batch_size, t.shape[1], self.n_heads, self.head_dim).transpose(1, 2) for t in (query, key, value)
        )
        # Full attention over the window (no causal mask), as upstream; `attn_mask` only hides padded tokens.
        dropout_p = self.dropout if self.training else 0.0
        if attentions_out is not None or self.config._attn_implementation == "eager":
            attended, weights = _eager_attention(query, key, value, attn_mask, dropout_p)
            if attentions_out is not None:
                attentions_out.append(weights)
        else:
            attended = _attention(query, key, value, attn_mask, dropout_p)
        attended = attended.transpose(1, 2).reshape(batch_size, query.shape[2], width)
        return self.resid_dropout(self.c_proj(attended))


class SaneMLP(nn.Module):
    """Position-wise feed-forward network: Linear(D, 4D) -> exact GELU -> Linear(4D, D) -> dropout."""

    def __init__(self, config: SaneConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.c_proj.is_residual_projection = True  # scaled init, see SanePreTrainedModel._init_weights
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(hidden_states))))


class SaneBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block: `x = x + Attn(LN1(x)); x = x + MLP(LN2(x))` (docs/method.md#model).

    A `GradientCheckpointingLayer`: after `model.gradient_checkpointing_enable()`, training recomputes each block's
    activations in the backward pass instead of storing them.
    """

    def __init__(self, config: SaneConfig):
        super().__init__()
        # SANE's LayerNorms have a weight and, with bias=False, no bias (docs/method.md#model).
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = SaneSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = SaneMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        attentions_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """With `keep` (`[B, Q]` token indices), only those tokens' outputs are computed (`[B, Q, D]`); every token
        still serves as a key and value. Per-token ops make this exactly the `keep` rows of the full output. With
        `attentions_out`, the block's attention weights are appended to it."""
        normed = self.ln_1(hidden_states)
        if keep is None:
            hidden_states = hidden_states + self.attn(normed, attn_mask, attentions_out=attentions_out)
        else:
            index = keep[..., None].expand(-1, -1, hidden_states.shape[-1])
            queries = normed.gather(1, index)
            attended = self.attn(normed, attn_mask, query_states=queries, attentions_out=attentions_out)
            hidden_states = hidden_states.gather(1, index) + attended
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class SaneProjectionHead(nn.Module):
    """
    Projection head for the contrastive loss (docs/method.md#model): pooled latents -> Linear -> LayerNorm -> ReLU ->
    Linear -> LayerNorm -> ReLU.

    With `projection_pooling="flatten"` the input is the flattened window (`window_size * latent_dim` features, the
    upstream head, tied to the window length, docs/method.md#departures-at-a-glance); with `"mean"` it is the latent averaged over
    the (unmasked) tokens of the window.
    """

    def __init__(self, config: SaneConfig):
        super().__init__()
        self.pooling = config.projection_pooling
        self.window_size = config.window_size
        in_features = config.window_size * config.latent_dim if self.pooling == "flatten" else config.latent_dim
        self.linear_1 = nn.Linear(in_features, config.projection_dim, bias=False)
        self.norm_1 = nn.LayerNorm(config.projection_dim)
        self.linear_2 = nn.Linear(config.projection_dim, config.projection_dim, bias=False)
        self.norm_2 = nn.LayerNorm(config.projection_dim)
        self.activation = nn.ReLU()

    def forward(self, latents: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "flatten":
            if latents.shape[1] != self.window_size:
                raise ValueError(
                    f"The projection head flattens a window of exactly config.window_size={self.window_size} tokens "
                    f"(projection_pooling='flatten'), but got a window of {latents.shape[1]} tokens. Use windows of "
                    "length window_size, `encode`/`decode` (no projection head), or projection_pooling='mean'."
                )
            pooled = latents.reshape(latents.shape[0], -1)
        elif attention_mask is None:
            pooled = latents.mean(dim=1)
        else:
            weights = attention_mask.to(latents.dtype).unsqueeze(-1)
            pooled = (latents * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        hidden = self.activation(self.norm_1(self.linear_1(pooled)))
        return self.activation(self.norm_2(self.linear_2(hidden)))


class SanePreTrainedModel(PreTrainedModel):
    """
    Base class of SANE models: configuration class and weight initialization.

    The token layout and the normalization that turn checkpoints into a SANE's inputs (and its outputs back into
    checkpoints) travel next to the weights as the SANE's weight processor (`preprocessor_config.json`, `sane_hf`'s
    `SaneProcessor`), as a tokenizer travels with a language model.
    """

    config_class = SaneConfig
    config: SaneConfig
    base_model_prefix = "sane"
    main_input_name = "tokens"
    _no_split_modules = ["SaneBlock"]
    supports_gradient_checkpointing = True
    # Attention runs through the scaled-dot-product-attention kernels (`F.scaled_dot_product_attention`; on CPU in
    # bf16/fp16, its float32 flash kernel, see `_attention`); declaring it lets `attn_implementation="sdpa"` through
    # `from_pretrained` / `from_config`.
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 style (docs/method.md#model). transformers calls this once per module, children before parents, and the
        # `init` functions skip tensors that were loaded from a checkpoint.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                # Residual projections (`*c_proj.weight`) use std / sqrt(2 * n_layers): two residual branches per
                # block (upstream takes the per-stack block count `ae:num_layers`, the encoder depth here). The flag
                # sits on the Linear itself because, for custom code, transformers skips `_init_weights` on modules
                # without parameters of their own (such as SaneSelfAttention), so a parent-level re-draw never runs.
                init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """
        Save the model with [`~PreTrainedModel.save_pretrained`], then write `sane_checksums.json` (size and sha256 of
        each `*.safetensors` file in the folder), which sane_hf's loaders verify before reading the weights. With
        `push_to_hub=True` the upload happens inside the parent's call, before the checksums exist; the Hub keeps its
        own hashes of the files.
        """
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if not is_main_process:
            return
        weights = sorted(name for name in os.listdir(save_directory) if name.endswith(".safetensors"))
        checksums = {name: _file_checksum(os.path.join(save_directory, name)) for name in weights}
        _write_json_atomic(os.path.join(save_directory, SANE_CHECKSUMS_NAME), checksums)


class SaneModel(SanePreTrainedModel):
    """
    The SANE autoencoder (docs/method.md#model): encoder, per-token latent bottleneck, decoder and projection head.

    ```
    encode:  h = Linear(T->D)(tokens) + PE(positions) -> dropout -> encoder blocks -> Linear(D->L) = latents
    decode:  u = Linear(L->D)(latents) + PE(positions) -> dropout -> decoder blocks -> Linear(D->T) = reconstructions
    project: projection_head(latents)            # only for the contrastive loss
    ```
    The position embedding is one module shared by encoder and decoder, as upstream. Windows are `[batch, length, ·]`
    with global positions; whole models (any length) go through [`~SaneModel.embed`], [`~SaneModel.haloed_encode`]
    and [`~SaneModel.haloed_decode`].

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.models.sane import SaneConfig, SaneModel

    >>> config = SaneConfig(token_size=12, d_model=32, n_heads=4, n_layers=2, latent_dim=8, window_size=16,
    ...                     max_positions=[64, 8, 16])
    >>> model = SaneModel(config).eval()
    >>> tokens = torch.randn(2, 16, 12)
    >>> positions = torch.stack([torch.arange(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1)
    >>> outputs = model(tokens, positions.expand(2, 16, 3))
    >>> outputs.latents.shape, outputs.reconstructions.shape, outputs.projections.shape
    (torch.Size([2, 16, 8]), torch.Size([2, 16, 12]), torch.Size([2, 30]))
    >>> # Whole models of any length: haloed windows, then the mean over tokens
    >>> model_positions = torch.stack([torch.arange(40), torch.arange(40) // 8, torch.arange(40) % 8], dim=-1)
    >>> model.embed(torch.randn(2, 40, 12), model_positions).shape
    torch.Size([2, 8])

    ```
    """

    def __init__(self, config: SaneConfig):
        super().__init__(config)
        self.input_projection = nn.Linear(config.token_size, config.d_model)
        self.position_embedding = SanePositionEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([SaneBlock(config) for _ in range(config.n_layers)])
        self.to_latent = nn.Linear(config.d_model, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, config.d_model)
        self.decoder = nn.ModuleList([SaneBlock(config) for _ in range(config.n_decoder_layers)])
        self.output_projection = nn.Linear(config.d_model, config.token_size)
        self.projection_head = SaneProjectionHead(config)
        # Initialize weights and apply final processing
        self.post_init()

    # ----------------------------------------------------------------------------------------------------------------
    # Windows
    # ----------------------------------------------------------------------------------------------------------------

    def encode(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Encode a batch of token windows into per-token latents.

        Args:
            tokens (`torch.FloatTensor` of shape `(batch_size, window_length, token_size)`):
                Weight tokens (normalized, zero-padded), one row per token.
            positions (`torch.LongTensor` of shape `(batch_size, window_length, 3)`):
                Global 3-coordinate positions (global index, layer index, row index) of the tokens. A batch dimension
                of 1 is broadcast over the batch.
            attention_mask (`torch.BoolTensor` of shape `(batch_size, window_length)`, *optional*):
                `True` for real tokens, `False` for padding tokens that no token may attend to. Every window needs at
                least one real token (a fully masked window gives NaNs, as any softmax over no keys).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, window_length, latent_dim)`: the latents.
        """
        self._check_window_inputs("tokens", tokens, self.config.token_size, positions, attention_mask)
        return self._encode(tokens, self.position_embedding(positions), _sdpa_key_mask(attention_mask))

    def decode(
        self, latents: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Decode per-token latents back into weight tokens.

        Args:
            latents (`torch.FloatTensor` of shape `(batch_size, window_length, latent_dim)`):
                Per-token latents, e.g. from [`~SaneModel.encode`] or sampled.
            positions (`torch.LongTensor` of shape `(batch_size, window_length, 3)`):
                Global positions of the tokens (a batch dimension of 1 is broadcast).
            attention_mask (`torch.BoolTensor` of shape `(batch_size, window_length)`, *optional*):
                `True` for real tokens, `False` for padding tokens.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, window_length, token_size)`: the reconstructed tokens.
        """
        self._check_window_inputs("latents", latents, self.config.latent_dim, positions, attention_mask)
        return self._decode(latents, self.position_embedding(positions), _sdpa_key_mask(attention_mask))

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> SaneModelOutput | tuple[torch.Tensor, ...]:
        r"""
        Encode, decode and project a batch of windows (upstream `AEModule.forward` returning `(z, y, zp)`).

        Args:
            tokens (`torch.FloatTensor` of shape `(batch_size, window_length, token_size)`):
                Weight tokens. With `projection_pooling="flatten"`, `window_length` must equal `config.window_size`.
            positions (`torch.LongTensor` of shape `(batch_size, window_length, 3)`):
                Global positions of the tokens (a batch dimension of 1 is broadcast).
            attention_mask (`torch.BoolTensor` of shape `(batch_size, window_length)`, *optional*):
                `True` for real tokens, `False` for padding tokens.
            return_dict (`bool`, *optional*):
                Whether to return a [`SaneModelOutput`] instead of a tuple `(latents, reconstructions, projections)`.
                Defaults to `config.return_dict`.
            output_hidden_states (`bool`, *optional*):
                Also return the hidden states of every encoder and decoder block (defaults to
                `config.output_hidden_states`).
            output_attentions (`bool`, *optional*):
                Also return the attention weights of every encoder and decoder block (defaults to
                `config.output_attentions`). Those blocks then run the written-out attention, which stores the
                weights, instead of the fused kernel.
        """
        _check_no_extra_inputs(type(self).__name__, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        self._check_window_inputs("tokens", tokens, self.config.token_size, positions, attention_mask)
        # One position embedding for both stacks: encoder and decoder share the PE module (docs/method.md#model).
        position_embeddings = self.position_embedding(positions)
        attn_mask = _sdpa_key_mask(attention_mask)
        encoder_states = [] if output_hidden_states else None
        decoder_states = [] if output_hidden_states else None
        encoder_attentions = [] if output_attentions else None
        decoder_attentions = [] if output_attentions else None
        latents = self._encode(
            tokens, position_embeddings, attn_mask, hidden_states_out=encoder_states, attentions_out=encoder_attentions
        )
        reconstructions = self._decode(
            latents,
            position_embeddings,
            attn_mask,
            hidden_states_out=decoder_states,
            attentions_out=decoder_attentions,
        )
        projections = self.projection_head(latents, attention_mask)
        output = SaneModelOutput(
            latents=latents,
            reconstructions=reconstructions,
            projections=projections,
            encoder_hidden_states=tuple(encoder_states) if output_hidden_states else None,
            decoder_hidden_states=tuple(decoder_states) if output_hidden_states else None,
            encoder_attentions=tuple(encoder_attentions) if output_attentions else None,
            decoder_attentions=tuple(decoder_attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def _encode(
        self,
        tokens: torch.Tensor,
        position_embeddings: torch.Tensor,
        attn_mask: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        hidden_states_out: list[torch.Tensor] | None = None,
        attentions_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """With `hidden_states_out`, the input embedding and every block's output are appended to it; with
        `attentions_out`, every block's attention weights."""
        hidden_states = self.input_projection(tokens.to(self.input_projection.weight.dtype)) + position_embeddings
        hidden_states = self.dropout(hidden_states)
        return self.to_latent(
            self._run_blocks(self.encoder, hidden_states, attn_mask, keep, hidden_states_out, attentions_out)
        )

    @staticmethod
    def _run_blocks(
        blocks: nn.ModuleList,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        keep: torch.Tensor | None,
        hidden_states_out: list[torch.Tensor] | None,
        attentions_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if hidden_states_out is not None:
            hidden_states_out.append(hidden_states)
        for i, block in enumerate(blocks):
            # `keep`: only these tokens' outputs are wanted, so the last block computes only them (haloed windows).
            # Positional arguments: a checkpointed block replays exactly what it was called with.
            hidden_states = block(hidden_states, attn_mask, keep if i == len(blocks) - 1 else None, attentions_out)
            if hidden_states_out is not None:
                hidden_states_out.append(hidden_states)
        return hidden_states

    def _decode(
        self,
        latents: torch.Tensor,
        position_embeddings: torch.Tensor,
        attn_mask: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        hidden_states_out: list[torch.Tensor] | None = None,
        attentions_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        hidden_states = self.from_latent(latents.to(self.from_latent.weight.dtype)) + position_embeddings
        hidden_states = self.dropout(hidden_states)
        return self.output_projection(
            self._run_blocks(self.decoder, hidden_states, attn_mask, keep, hidden_states_out, attentions_out)
        )

    def _check_window_inputs(
        self,
        name: str,
        values: torch.Tensor,
        width: int,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> None:
        field = "token_size" if name == "tokens" else "latent_dim"
        if values.ndim != 3:
            raise ValueError(
                f"`{name}` must have shape (batch_size, window_length, {field}) with a batch dimension, got shape "
                f"{tuple(values.shape)}."
            )
        if values.shape[-1] != width:
            raise ValueError(f"`{name}` has last dimension {values.shape[-1]} but config.{field} is {width}.")
        batch_size, length = values.shape[:2]
        if positions.ndim != 3 or positions.shape[-1] != 3:
            raise ValueError(
                f"`positions` must have shape (batch_size, window_length, 3), got shape {tuple(positions.shape)}."
            )
        if positions.shape[1] != length or positions.shape[0] not in (1, batch_size):
            raise ValueError(
                f"`positions` of shape {tuple(positions.shape)} does not match `{name}` of shape "
                f"{tuple(values.shape)}: expected ({batch_size} or 1, {length}, 3)."
            )
        if positions.is_floating_point() or positions.is_complex():
            raise ValueError(f"`positions` must be an integer tensor, got dtype {positions.dtype}.")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, length):
            raise ValueError(
                f"`attention_mask` must have shape (batch_size, window_length) = ({batch_size}, {length}), got "
                f"{tuple(attention_mask.shape)}."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Full sequences (whole models) with haloed windows
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def haloed_encode(
        self, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int | None = None
    ) -> torch.Tensor:
        """
        Encode full token sequences of any length with haloed windows (docs/method.md#samplers), without gradients.

        Each sequence is cut into content windows of `config.window_size - 2 * config.halo_size` tokens; every window
        is encoded together with up to `config.halo_size` context tokens on each side (a snippet of at most
        `config.window_size` tokens, the training window length), and only its content latents are kept. When the
        sequence fits in one snippet this is exactly [`~SaneModel.encode`] over the whole sequence.

        Args:
            tokens (`torch.FloatTensor` of shape `(batch_size, seq_len, token_size)`):
                Full token sequences. They may live on another device than the model (e.g. CPU); snippets are moved
                to the model's device batch by batch and the result is returned on `tokens.device`.
            positions (`torch.LongTensor` of shape `(batch_size, seq_len, 3)` or `(seq_len, 3)`):
                Global positions; `(seq_len, 3)` is shared by all sequences.
            batch_size (`int`, *optional*):
                Number of snippets encoded per forward pass; by default 64 on accelerators and, on CPU, as many as
                keep the widest activation near 8 MB (8 snippets of 256 tokens at d_model 256).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, seq_len, latent_dim)`: per-token latents, float32 also under
            bf16 autocast.
        """
        return self._haloed_apply(self._encode, "tokens", tokens, self.config.token_size, positions, batch_size)

    @torch.no_grad()
    def haloed_decode(
        self,
        latents: torch.Tensor,
        positions: torch.Tensor,
        batch_size: int | None = None,
        sequences: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """
        Decode full latent sequences of any length with haloed windows (docs/method.md#samplers), without gradients.

        The counterpart of [`~SaneModel.haloed_encode`], with the same windows.

        Args:
            latents (`torch.FloatTensor` of shape `(batch_size, seq_len, latent_dim)`):
                Per-token latents of full sequences (e.g. sampled around anchor embeddings).
            positions (`torch.LongTensor` of shape `(batch_size, seq_len, 3)` or `(seq_len, 3)`):
                Global positions; `(seq_len, 3)` is shared by all sequences.
            batch_size (`int`, *optional*):
                Number of snippets decoded per forward pass (default: as in [`~SaneModel.haloed_encode`]).
            sequences (`tuple[int, int]`, *optional*):
                `(start, stop)`: decode only sequences `start` to `stop - 1`, running exactly the forward passes
                that decoding all of them runs for those sequences (a pass may hold snippets of neighbours, which
                are computed and dropped). The result is bit-identical to those rows of the full decode, so
                processes that share out the sequences get the networks one process gets.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, seq_len, token_size)` (`(stop - start, ...)` with
            `sequences`): reconstructed tokens, float32 also under bf16 autocast.
        """
        return self._haloed_apply(
            self._decode, "latents", latents, self.config.latent_dim, positions, batch_size, sequences
        )

    @torch.no_grad()
    def embed(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        batch_size: int | None = None,
        return_token_latents: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Embed whole models: haloed encoding of the full token sequence, then the mean over tokens (docs/method.md#probes).

        Runs without gradients and in the model's current mode: call `model.eval()` first when `config.dropout > 0`
        (models returned by `from_pretrained` already are in eval mode).

        Args:
            tokens (`torch.FloatTensor` of shape `(batch_size, seq_len, token_size)`):
                Full token sequences, normalized like the training data.
            positions (`torch.LongTensor` of shape `(batch_size, seq_len, 3)` or `(seq_len, 3)`):
                Global positions; `(seq_len, 3)` is shared by all sequences.
            batch_size (`int`, *optional*):
                Number of snippets encoded per forward pass; by default 64 on accelerators and, on CPU, as many as
                keep the widest activation near 8 MB (8 snippets of 256 tokens at d_model 256).
            return_token_latents (`bool`, *optional*, defaults to `False`):
                Whether to also return the per-token latents.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, latent_dim)`, or a tuple of it and the token latents of shape
            `(batch_size, seq_len, latent_dim)` when `return_token_latents=True`.
        """
        token_latents = self.haloed_encode(tokens, positions, batch_size=batch_size)
        embeddings = token_latents.mean(dim=1)
        return (embeddings, token_latents) if return_token_latents else embeddings

    def _snippets_per_pass(self, device: torch.device, snippet_len: int) -> int:
        """The default `batch_size` of the haloed methods (see `_CPU_PASS_ACTIVATIONS`)."""
        if device.type != "cpu":
            return _ACCELERATOR_SNIPPETS_PER_PASS
        return max(1, _CPU_PASS_ACTIVATIONS // (snippet_len * 4 * self.config.d_model))

    def _haloed_apply(
        self,
        function: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
        name: str,
        inputs: torch.Tensor,
        width: int,
        positions: torch.Tensor,
        batch_size: int | None,
        sequences: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
        if positions.ndim == 2:
            positions = positions.unsqueeze(0)
        self._check_window_inputs(name, inputs, width, positions, None)
        if inputs.shape[1] == 0:
            raise ValueError(f"`{name}` must hold at least one token, got shape {tuple(inputs.shape)}.")
        positions = positions.to(device=inputs.device, dtype=torch.long)
        self.position_embedding.check_positions(positions)  # once for the whole sequence, not per batch

        num_sequences, seq_len = inputs.shape[:2]
        first, stop = (0, num_sequences) if sequences is None else sequences
        if not 0 <= first < stop <= num_sequences:
            raise ValueError(
                f"`sequences` must be (start, stop) with 0 <= start < stop <= {num_sequences} (the sequences of "
                f"`{name}`), got {sequences!r}."
            )
        content_size, halo_size = self.config.content_size, self.config.halo_size
        device = self.input_projection.weight.device
        shared_positions = positions.shape[0] == 1

        if seq_len <= content_size + 2 * halo_size:
            # Every snippet would be the whole sequence: run each sequence once instead of once per window.
            batch_size = batch_size or self._snippets_per_pass(device, seq_len)
            outputs = []
            # Only the passes that hold sequences first..stop-1 (all of them without `sequences`).
            first_pass = first // batch_size * batch_size
            for start in range(first_pass, stop, batch_size):
                chunk = inputs[start : start + batch_size].to(device)
                chunk_positions = positions if shared_positions else positions[start : start + batch_size]
                chunk_embeddings = self.position_embedding(chunk_positions.to(device), check_range=False)
                outputs.append(function(chunk, chunk_embeddings, None))
            output = torch.cat(outputs)[first - first_pass : stop - first_pass]
            # Float32 out whatever the compute precision (bf16 autocast gives bf16 activations).
            return output.to(inputs.device, torch.promote_types(outputs[0].dtype, torch.float32))

        snippet_index, content_mask = haloed_window_index(seq_len, content_size, halo_size, device=inputs.device)
        n_windows, snippet_len = snippet_index.shape
        batch_size = batch_size or self._snippets_per_pass(device, snippet_len)
        # The halo only serves as context: the last block computes the outputs of `query_len` tokens per snippet,
        # a contiguous range holding the window's content (content + halo of every block below is still needed as
        # keys and values). This skips the halo tokens' share of the last block and of the output projection.
        query_len = min(content_size, snippet_len)
        content_start = torch.arange(n_windows, device=inputs.device) * content_size - snippet_index[:, 0]
        query_start = content_start.clamp(max=snippet_len - query_len)
        query_index = query_start[:, None] + torch.arange(query_len, device=inputs.device)  # [n_windows, Q]
        query_content = content_mask.gather(1, query_index)  # [n_windows, Q]
        # One row per (sequence, window) pair; batches of rows are gathered with a single indexing op each, so the
        # snippets of all windows are never materialized at once (they overlap by 2 * halo_size tokens).
        row_sequence = torch.arange(num_sequences, device=inputs.device).repeat_interleave(n_windows)
        row_window = torch.arange(n_windows, device=inputs.device).repeat(num_sequences)
        result = None
        # Only the passes that hold rows of sequences first..stop-1 (all of them without `sequences`).
        first_row, stop_row = first * n_windows, stop * n_windows
        for start in range(first_row // batch_size * batch_size, stop_row, batch_size):
            sequence = row_sequence[start : start + batch_size, None]  # [n, 1]
            index = snippet_index[row_window[start : start + batch_size]]  # [n, snippet_len]
            snippets = inputs[sequence, index]  # [n, snippet_len, width]
            snippet_positions = positions[0, index] if shared_positions else positions[sequence, index]
            snippet_embeddings = self.position_embedding(snippet_positions.to(device), check_range=False)
            windows = row_window[start : start + batch_size]
            output = function(snippets.to(device), snippet_embeddings, None, query_index[windows].to(device))
            if result is None:
                # Float32 out whatever the compute precision (bf16 autocast gives bf16 activations).
                dtype = torch.promote_types(output.dtype, torch.float32)
                result = inputs.new_zeros((stop - first, seq_len, output.shape[-1]), dtype=dtype)
            # Scatter the content tokens back; each token is content of exactly one window, so writes never collide.
            keep = query_content[windows] & (sequence >= first) & (sequence < stop)  # [n, Q]
            targets = index.gather(1, query_index[windows])  # [n, Q] token index of every output
            result[sequence.expand_as(targets)[keep] - first, targets[keep]] = output[keep.to(output.device)].to(
                result.device, result.dtype
            )
        return result


# ----------------------------------------------------------------------------------------------------------------------
# Pretraining objective (docs/method.md#objective, upstream `GammaContrastReconLoss`):
# `loss = gamma * NT-Xent(projections of the two views) + (1 - gamma) * masked MSE(reconstructions, targets)`.
# It lives in this file so that SaneForPreTraining returns its loss also under `trust_remote_code`, without `sane_hf`;
# `sane_hf.training.losses` re-exports these functions.
# ----------------------------------------------------------------------------------------------------------------------

RECONSTRUCTION_REDUCTIONS = ("mean", "original")
# Upstream switches a term off below this distance of gamma to 0 or 1 (docs/method.md#objective).
_GAMMA_EPS = 1e-10


def masked_reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Mean squared error of reconstructed tokens.

    Args:
        pred (`torch.Tensor` of shape `(B, W, T)`): reconstructions (values at padding are ignored).
        target (`torch.Tensor` of shape `(B, W, T)`): targets.
        mask (`torch.BoolTensor` of shape `(B, W, T)`): True on real values.
        reduction (`str`, *optional*, defaults to `"mean"`): `"mean"`: the mean over real entries only;
            `"original"`: upstream's `mean((mask * pred - target)^2)` over all entries, padding included.

    Returns:
        A scalar float32 tensor (0 when there is no real entry).
    """
    return _reconstruction_loss_and_error_sum(pred, target, mask, reduction)[0]


def _reconstruction_loss_and_error_sum(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`masked_reconstruction_loss` and, for `reduction="mean"`, the sum of squared errors it divides (which
    `reconstruction_r2` reuses instead of a second pass over the batch)."""
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"`pred`, `target` and `mask` must have one shape, got {list(pred.shape)}, {list(target.shape)}, "
            f"{list(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"`mask` must be a bool tensor, got {mask.dtype}.")
    pred, target = pred.float(), target.float()
    if reduction == "mean":
        # `where`, not a product: whatever the model puts at padding (even inf/NaN) cannot leak into the loss. The
        # padding takes the target's value, so `mse_loss` (one fused pass forward and one backward) sums real entries.
        squared_error_sum = _masked_squared_error_sum(pred, target, mask)
        return squared_error_sum / mask.sum().clamp_min(1), squared_error_sum
    if reduction == "original":
        return (pred * mask - target).square().mean(), None
    raise ValueError(f"`reduction` must be one of {RECONSTRUCTION_REDUCTIONS}, got {reduction!r}.")


def _masked_squared_error_sum(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of `(pred - target)^2` over the entries where `mask` is True."""
    return F.mse_loss(torch.where(mask, pred, target), target, reduction="sum")


def reconstruction_r2(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, squared_error_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """Coefficient of determination `1 - SS_res / SS_tot` over the real entries (a monitoring metric, no gradient).

    Unlike upstream's `loss/rsq` (torchmetrics explained variance per token column across the batch, averaged), it
    is one global R² over all real values of the batch, so padding columns cannot distort it. `squared_error_sum`,
    when the caller has it already (the loss), is `SS_res`.
    """
    with torch.no_grad():
        pred, target = pred.float(), target.float()
        count = mask.sum().clamp_min(1)
        mean = torch.where(mask, target, 0).sum() / count
        ss_res = _masked_squared_error_sum(pred, target, mask) if squared_error_sum is None else squared_error_sum
        ss_tot = torch.where(mask, target - mean, 0).square().sum()
        return 1 - ss_res / ss_tot.clamp_min(torch.finfo(torch.float32).tiny)


def nt_xent_loss(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (docs/method.md#objective).

    With `u = cat(z_i, z_j)` (2B rows) and `s_ab = cos(u_a, u_b) / temperature`, row a's positive is its partner
    `a ± B` and its negatives are the other 2B - 2 rows (itself excluded). The loss is the cross-entropy of picking
    the positive, averaged over the 2B rows (upstream sums and divides by 2B: the same number).

    Args:
        z_i (`torch.Tensor` of shape `(B, P)`): projections of view 1.
        z_j (`torch.Tensor` of shape `(B, P)`): projections of view 2 (row b is the positive of `z_i[b]`).
        temperature (`float`, *optional*, defaults to 0.1): `tau`.

    Returns:
        A scalar float32 tensor. Any batch size works (no `drop_last` needed); B = 1 gives 0 (no negatives).
    """
    if z_i.ndim != 2 or z_i.shape != z_j.shape or z_i.shape[0] < 1:
        raise ValueError(
            f"`z_i` and `z_j` must both have shape [B, P] with B >= 1, got {list(z_i.shape)} and {list(z_j.shape)}."
        )
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a positive float, got {temperature!r}.")
    batch_size = z_i.shape[0]
    u = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)
    similarity = u @ u.T / temperature
    self_mask = torch.eye(2 * batch_size, dtype=torch.bool, device=u.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(batch_size, 2 * batch_size), torch.arange(batch_size)]).to(u.device)
    return F.cross_entropy(similarity, positives)


def sane_pretraining_loss(
    reconstructions: torch.Tensor,
    projections: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 0.05,
    temperature: float = 0.1,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """SANE's pretraining objective `gamma * L_contrast + (1 - gamma) * L_recon` on both views in one batch.

    Args:
        reconstructions (`torch.Tensor` of shape `(2B, W, T)`): the model's reconstructions of view 1 (rows `:B`)
            then view 2 (rows `B:`).
        projections (`torch.Tensor` of shape `(2B, P)`): the projection head's outputs, in the same order; row `b`
            and row `B + b` are a positive pair.
        targets (`torch.Tensor` of shape `(2B, W, T)`): what to reconstruct (each view's input, or its clean window
            for a denoising autoencoder).
        mask (`torch.BoolTensor` of shape `(2B, W, T)`): True on real entries.
        gamma (`float`, *optional*, defaults to 0.05): weight of the contrastive term in [0, 1]. Below 1e-10 the
            contrastive term is skipped (reconstruction only); within 1e-10 of 1 the reconstruction term is skipped.
        temperature (`float`, *optional*, defaults to 0.1): NT-Xent temperature.
        reduction (`str`, *optional*, defaults to `"mean"`): see `masked_reconstruction_loss`.

    Returns:
        `dict` with scalar tensors `loss` (to backpropagate), `loss_recon`, `loss_contrast` (a detached 0 when its
        term is skipped) and `r2` (reconstruction R² over real entries, no gradient).
    """
    if not (isinstance(gamma, int | float) and 0 <= gamma <= 1):
        raise ValueError(f"`gamma` must be in [0, 1], got {gamma!r}.")
    if reconstructions.shape[0] % 2 or projections.shape[0] != reconstructions.shape[0]:
        raise ValueError(
            "`reconstructions` and `projections` must hold both views (2B rows each), got shapes "
            f"{list(reconstructions.shape)} and {list(projections.shape)}."
        )
    zero = torch.zeros((), device=reconstructions.device)
    use_contrast = gamma >= _GAMMA_EPS
    use_recon = abs(1 - gamma) >= _GAMMA_EPS
    # Both views in one tensor, as upstream: the mean runs over the real entries of the 2B windows together.
    squared_error_sum = None
    if use_recon:
        loss_recon, squared_error_sum = _reconstruction_loss_and_error_sum(reconstructions, targets, mask, reduction)
    else:
        loss_recon = zero
    if use_contrast:
        z_i, z_j = projections.chunk(2)
        loss_contrast = nt_xent_loss(z_i, z_j, temperature)
    else:
        loss_contrast = zero
    if use_recon and use_contrast:
        loss = gamma * loss_contrast + (1 - gamma) * loss_recon
    else:
        loss = loss_recon if use_recon else loss_contrast
    return {
        "loss": loss,
        "loss_recon": loss_recon,
        "loss_contrast": loss_contrast,
        "r2": reconstruction_r2(
            reconstructions, targets, mask, None if squared_error_sum is None else squared_error_sum.detach()
        ),
    }


@dataclass
class SaneForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`SaneForPreTraining`]: the SANE loss on a batch of two-view pairs, its terms, and the model outputs.

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `gamma * loss_contrast + (1 - gamma) * loss_recon` (`config.gamma`), the loss to backpropagate.
        loss_recon (`torch.FloatTensor` of shape `()`):
            Mean squared reconstruction error over the real entries of both views.
        loss_contrast (`torch.FloatTensor` of shape `()`):
            NT-Xent of the two views' projections (temperature `config.temperature`).
        r2 (`torch.FloatTensor` of shape `()`):
            Reconstruction R² over the real entries of both views (a metric, no gradient).
        latents (`torch.FloatTensor` of shape `(batch_size, 2, window_length, latent_dim)`):
            Per-token latents of each view.
        reconstructions (`torch.FloatTensor` of shape `(batch_size, 2, window_length, token_size)`):
            Reconstructed tokens of each view.
        projections (`torch.FloatTensor` of shape `(batch_size, 2, projection_dim)`):
            Projection-head outputs of each view.
        encoder_hidden_states, decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            With `output_hidden_states=True`: the backbone's per-block hidden states, each `(batch_size, 2,
            window_length, d_model)`.
        encoder_attentions, decoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
            With `output_attentions=True`: the backbone's per-block attention weights, each `(batch_size, 2,
            n_heads, window_length, window_length)`.
    """

    loss: torch.FloatTensor | None = None
    loss_recon: torch.FloatTensor | None = None
    loss_contrast: torch.FloatTensor | None = None
    r2: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    reconstructions: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


def _stack_views(name: str, value: torch.Tensor, batch_size: int, trailing: tuple[int, ...]) -> torch.Tensor:
    """`(B, 2, *trailing)` pairs -> `(2B, *trailing)`: every view 1, then every view 2 (rows `b` and `B + b` pair)."""
    if value.ndim != 2 + len(trailing) or value.shape[0] != batch_size or value.shape[1] != 2:
        raise ValueError(
            f"`{name}` must have shape (batch_size, 2, {', '.join(map(str, trailing))}) with the two views of every "
            f"sample, got {tuple(value.shape)} (batch_size {batch_size})."
        )
    return torch.cat([value[:, 0], value[:, 1]])


def _split_views(value: torch.Tensor) -> torch.Tensor:
    """`(2B, ...)` -> `(B, 2, ...)`, the inverse of `_stack_views`."""
    view_1, view_2 = value.chunk(2)
    return torch.stack([view_1, view_2], dim=1)


class SaneForPreTraining(SanePreTrainedModel):
    """
    SANE with its pretraining objective (docs/method.md#objective): [`SaneModel`] as the backbone (`model.sane`), and a
    forward pass that takes the two views of every window and returns the loss, as ViTMAE's `ViTMAEForPreTraining`.

    The views are built outside the model (window cutting, the permutation of view 2, noise: `sane_hf`'s
    `PretrainingCollator`), so a batch is `tokens` / `positions` / `mask` of shape `(batch_size, 2, ...)`, view 1 at
    index 0. `AutoModel` still loads the backbone; `AutoModelForPreTraining` loads this class, and both load each
    other's checkpoints.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.models.sane import SaneConfig, SaneForPreTraining

    >>> config = SaneConfig(token_size=12, d_model=32, n_heads=4, n_layers=2, latent_dim=8, window_size=16,
    ...                     max_positions=[64, 8, 16])
    >>> model = SaneForPreTraining(config)
    >>> positions = torch.stack([torch.arange(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=-1)
    >>> view_1 = torch.randn(4, 16, 12)
    >>> view_2 = view_1 * (1 + 0.1 * torch.randn_like(view_1))
    >>> outputs = model(tokens=torch.stack([view_1, view_2], dim=1), positions=positions.expand(4, 2, 16, 3))
    >>> outputs.loss.backward()
    >>> outputs.reconstructions.shape
    torch.Size([4, 2, 16, 12])

    ```
    """

    # Trainer would otherwise pass `num_items_in_batch` to a forward with `**kwargs`; the SANE loss averages itself.
    accepts_loss_kwargs = False

    def __init__(self, config: SaneConfig):
        super().__init__(config)
        self.sane = SaneModel(config)
        # Initialize weights and apply final processing
        self.post_init()

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> SaneForPreTrainingOutput | tuple[torch.Tensor, ...]:
        r"""
        The SANE loss of a batch of two-view pairs.

        Args:
            tokens (`torch.FloatTensor` of shape `(batch_size, 2, window_length, token_size)`):
                The two (augmented) views of every window: `tokens[:, 0]` is view 1, `tokens[:, 1]` view 2.
            positions (`torch.LongTensor` of shape `(batch_size, 2, window_length, 3)`):
                Global positions of the tokens of each view.
            mask (`torch.BoolTensor` of shape `(batch_size, 2, window_length, token_size)`, *optional*):
                `True` on real entries; padding entries do not count in the reconstruction loss. Defaults to all
                `True`.
            labels (`torch.FloatTensor` of shape `(batch_size, 2, window_length, token_size)`, *optional*):
                What each view reconstructs; defaults to `tokens` (upstream SANE). The clean, un-noised windows make
                a denoising autoencoder.
            attention_mask (`torch.BoolTensor` of shape `(batch_size, 2, window_length)`, *optional*):
                `True` for real tokens, `False` for padding tokens that no token may attend to.
            return_dict (`bool`, *optional*):
                Whether to return a [`SaneForPreTrainingOutput`] instead of a tuple.
            output_hidden_states (`bool`, *optional*):
                Also return the backbone's per-block hidden states.
            output_attentions (`bool`, *optional*):
                Also return the backbone's per-block attention weights (see [`SaneModel`]).
        """
        _check_no_extra_inputs(type(self).__name__, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if tokens.ndim != 4:
            raise ValueError(
                "`tokens` must have shape (batch_size, 2, window_length, token_size): the two views of every window "
                f"(build them with sane_hf's PretrainingCollator), got {tuple(tokens.shape)}."
            )
        batch_size, _, length, token_size = tokens.shape
        if positions.ndim == 4 and positions.shape[0] == 1:
            positions = positions.expand(batch_size, -1, -1, -1)
        flat_tokens = _stack_views("tokens", tokens, batch_size, (length, token_size))
        flat_positions = _stack_views("positions", positions, batch_size, (length, 3))
        flat_mask = (
            torch.ones_like(flat_tokens, dtype=torch.bool)
            if mask is None
            else _stack_views("mask", mask, batch_size, (length, token_size))
        )
        flat_targets = (
            flat_tokens if labels is None else _stack_views("labels", labels, batch_size, (length, token_size))
        )
        flat_attention = (
            None if attention_mask is None else _stack_views("attention_mask", attention_mask, batch_size, (length,))
        )
        # Both views in one forward pass: one graph, one DDP reduction, a larger matmul.
        outputs = self.sane(
            tokens=flat_tokens,
            positions=flat_positions,
            attention_mask=flat_attention,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        losses = sane_pretraining_loss(
            outputs.reconstructions.float(),
            outputs.projections.float(),
            flat_targets,
            flat_mask,
            gamma=self.config.gamma,
            temperature=self.config.temperature,
        )
        hidden = {
            name: tuple(_split_views(state) for state in states)
            for name in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions")
            if (states := getattr(outputs, name)) is not None
        }
        output = SaneForPreTrainingOutput(
            **losses,
            latents=_split_views(outputs.latents),
            reconstructions=_split_views(outputs.reconstructions),
            projections=_split_views(outputs.projections),
            **hidden,
        )
        return output if return_dict else output.to_tuple()


def _check_no_extra_inputs(model_name: str, extra: dict[str, Any]) -> None:
    """A clear error for arguments a SANE forward does not take (e.g. `labels`, or a whole window batch)."""
    if not extra:
        return
    hint = ""
    if "labels" in extra and model_name == "SaneModel":
        hint = " SaneModel computes no loss; SaneForPreTraining takes the two views and returns the SANE loss."
    elif "mask" in extra and model_name == "SaneModel":
        hint = (
            " `mask` (real token entries) only serves the loss: pass `tokens` and `positions` of a window batch, or "
            "give the batch of two views to SaneForPreTraining."
        )
    raise ValueError(f"{model_name}.forward got unexpected argument(s) {sorted(extra)}.{hint}")


def _sdpa_key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`[B, W]` padding mask (True = real token) -> boolean SDPA key mask `[B, 1, 1, W]` (True = may be attended)."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


def _file_checksum(path: str) -> dict:
    # `{"size", "sha256"}` as sane_hf records it for every file it writes (this file may import the stdlib only).
    with open(path, "rb") as file:
        return {"size": os.path.getsize(path), "sha256": hashlib.file_digest(file, "sha256").hexdigest()}


def _write_json_atomic(path: str, payload: dict) -> None:
    if not isinstance(payload, dict):
        raise TypeError(f"{os.path.basename(path)} must hold a JSON dict, got {type(payload).__name__}.")
    # Write a temporary file in the same folder, then rename it: readers never see a half-written file.
    tmp_path = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp_path, "w", encoding="utf-8") as file:
            json.dump(payload, file, indent=2)
            file.write("\n")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


# Copy this file (and, through its relative import, configuration_sane.py) into the repository on `save_pretrained`
# and write `auto_map` into config.json, so `AutoModel.from_pretrained(repo, trust_remote_code=True)` works without
# `sane_hf` installed.
SaneModel.register_for_auto_class("AutoModel")
SaneForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "RECONSTRUCTION_REDUCTIONS",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePositionEmbedding",
    "SanePreTrainedModel",
    "SaneProjectionHead",
    "haloed_window_index",
    "masked_reconstruction_loss",
    "nt_xent_loss",
    "reconstruction_r2",
    "sane_pretraining_loss",
]
