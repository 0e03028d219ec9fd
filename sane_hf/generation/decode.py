"""From sampled latents to runnable zoo-member networks (docs/method.md#samplers).

latents `[n, S, L]` → haloed decoding (`SaneModel.haloed_decode`) → tokens `[n, S, T]` → de-normalization with the
zoo's train statistics → `TokenLayout.detokenize` → a state_dict per sample → the zoo architecture rebuilt with
`build_zoo_model(architecture, **kwargs)` and loaded *strictly*.

Transfer to another head size (the original's `reset_classifier`): the original zero-padded or truncated the token
sequence at its end, assuming only the tail differs (docs/method.md#samplers step 3, §7.4 item 6). Here the layouts of the
source and the target architecture are compared layer by layer instead: every layer whose shape agrees is copied,
the classifier (the target's last tokenized weight layer) keeps the target's fresh PyTorch initialization, and any
other mismatch is an error naming the layer.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..tokenization.layout import KIND_WEIGHT, TokenLayout
from ..tokenization.normalization import TokenNormalization
from ..utils.precision import precision_autocast, resolve_precision
from ..zoo_models import build_zoo_model


logger = logging.getLogger(__name__)


def decode_latents(
    sane: Any,
    latents: torch.Tensor,
    positions: torch.Tensor,
    batch_size: int | None = None,
    precision: str = "fp32",
    sequences: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Haloed decoding of full latent sequences `[n, S, L]` into (normalized) tokens `[n, S, T]`, float32, on CPU.

    `precision` (`"fp32"`, `"bf16"` or `"auto"`, see `sane_hf.utils.precision`) is the compute precision;
    `sequences=(start, stop)` decodes only those rows, bit-identical to them in the full decode
    (`SaneModel.haloed_decode`)."""
    if latents.ndim != 3:
        raise ValueError(f"`latents` must have shape (num_samples, seq_len, latent_dim), got {tuple(latents.shape)}.")
    device = next(sane.parameters()).device
    with precision_autocast(resolve_precision(precision, device, "decoding"), device):
        # `sequences` only when given: one process calls `haloed_decode` as SANEs without that argument take it.
        share = {} if sequences is None else {"sequences": sequences}
        return sane.haloed_decode(latents, positions, batch_size=batch_size, **share).float().cpu()


def tokens_to_state_dict(
    tokens: torch.Tensor, layout: TokenLayout, normalization: TokenNormalization | None = None
) -> dict[str, torch.Tensor]:
    """De-normalize `[n, S, T]` tokens (when `normalization` is given) and detokenize them into a batched state_dict.

    Values at padding positions are ignored. The result does not alias `tokens`.
    """
    if normalization is not None:
        tokens = normalization.denormalize(tokens, layout)
    return layout.detokenize(tokens, copy=True)


def classifier_layer(layout: TokenLayout) -> int:
    """Index of the classifier in a layout: the last tokenized layer of kind `"weight"` (e.g. `fc.weight`)."""
    for index in range(layout.num_layers - 1, -1, -1):
        if layout.layers[index].kind == KIND_WEIGHT:
            return index
    raise ValueError("The token layout has no weight layer, so it has no classifier to reset.")


@dataclass(frozen=True)
class TransferPlan:
    """Which tensors of a source state_dict go to which keys of a target architecture.

    Args:
        pairs (`list[tuple[str, str]]`): `(source key, target key)` of every copied tensor.
        reset_keys (`list[str]`): target keys left at their fresh initialization (the classifier when reset).
    """

    pairs: list[tuple[str, str]]
    reset_keys: list[str]


def plan_transfer(source: TokenLayout, target: TokenLayout, reset_classifier: bool = False) -> TransferPlan:
    """Match the tokenized layers of two layouts position by position.

    Layer names may differ (the zoo CNNs shift their `module_list` indices when Dropout modules exist); shapes must
    agree, except for the classifier when `reset_classifier=True`.

    Raises:
        `ValueError`: the layer counts differ, a layer other than the classifier changes shape, or the classifier
        changes shape without `reset_classifier`.
    """
    if source.num_layers != target.num_layers:
        raise ValueError(
            f"The target architecture has {target.num_layers} tokenized layers, the SANE's zoo has "
            f"{source.num_layers}; generated weights only transfer to architectures that differ at most in the "
            "classifier."
        )
    head = classifier_layer(target)
    pairs, reset_keys = [], []
    source_entries = {e.key: e for e in source.entries}
    target_entries = {e.key: e for e in target.entries}
    for index, (src, tgt) in enumerate(zip(source.layers, target.layers)):
        src_keys = [src.weight_key] + ([src.bias_key] if src.bias_key else [])
        tgt_keys = [tgt.weight_key] + ([tgt.bias_key] if tgt.bias_key else [])
        if index == head and reset_classifier:
            reset_keys.extend(tgt_keys)
            continue
        same = len(src_keys) == len(tgt_keys) and all(
            source_entries[a].shape == target_entries[b].shape for a, b in zip(src_keys, tgt_keys)
        )
        if not same:
            shapes = (
                [list(source_entries[k].shape) for k in src_keys],
                [list(target_entries[k].shape) for k in tgt_keys],
            )
            hint = (
                " Pass reset_classifier=True to re-initialize the classifier for the new class count."
                if index == head
                else ""
            )
            raise ValueError(
                f"Layer {index} of the target ({tgt.name!r}, shapes {shapes[1]}) does not match the SANE's zoo "
                f"layer ({src.name!r}, shapes {shapes[0]}).{hint}"
            )
        pairs.extend(zip(src_keys, tgt_keys))
    return TransferPlan(pairs=pairs, reset_keys=reset_keys)


def build_model_from_state_dict(
    architecture: str,
    model_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    source_layout: TokenLayout,
    reset_classifier: bool = False,
    init_seed: int | None = None,
    target_layout: TokenLayout | None = None,
) -> nn.Module:
    """Rebuild a zoo member and load (decoded) weights into it strictly.

    Args:
        architecture (`str`): zoo registry name (`sane_hf.zoo_models.list_zoo_architectures()`).
        model_kwargs (`Mapping[str, Any]`): its constructor arguments (e.g. `num_classes` for another task).
        state_dict (`Mapping[str, torch.Tensor]`): one unbatched state_dict with the keys of `source_layout`.
        source_layout (`TokenLayout`): the SANE's zoo layout the weights were detokenized with.
        reset_classifier (`bool`, *optional*, defaults to `False`): keep the target's freshly initialized classifier.
        init_seed (`int`, *optional*): seed of the fresh initialization (the classifier when reset; entries that are
            not tokenized); the global RNG is left untouched.
        target_layout (`TokenLayout`, *optional*): the target's layout, if already computed (cache).

    Returns:
        `ZooModel` in eval mode.
    """
    return _build_model(
        architecture, model_kwargs, state_dict, source_layout, reset_classifier, init_seed, target_layout
    )[0]


def _build_model(
    architecture: str,
    model_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    source_layout: TokenLayout,
    reset_classifier: bool,
    init_seed: int | None,
    target_layout: TokenLayout | None,
) -> tuple[nn.Module, TokenLayout]:

    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        model = build_zoo_model(architecture, **dict(model_kwargs))
    if target_layout is None:
        target_layout = layout_for_module(model, source_layout)
    plan = plan_transfer(source_layout, target_layout, reset_classifier=reset_classifier)
    target_state = model.state_dict()
    for source_key, target_key in plan.pairs:
        reference = target_state[target_key]
        target_state[target_key] = state_dict[source_key].detach().to(reference.dtype).reshape(reference.shape)
    # Entries the layout does not tokenize (num_batches_tracked, untokenized BN statistics) keep the fresh model's
    # values; BN conditioning re-estimates the statistics (docs/method.md#batchnorm-conditioning).
    model.load_state_dict(target_state, strict=True)
    return model.eval(), target_layout


def layout_for_module(model: nn.Module, source_layout: TokenLayout) -> TokenLayout:
    """The layout of `model` tokenized with the same options as `source_layout` (token size, BN handling)."""
    return TokenLayout.from_module(
        model,
        token_size=source_layout.token_size,
        tokenize_bn_stats=source_layout.tokenize_bn_stats,
        ignore_bn=source_layout.ignore_bn,
    )


class ModelDecoder:
    """Turn sampled latents (or zoo tokens) into zoo-member networks, the whole path of docs/method.md#samplers.

    Args:
        sane (`SaneModel`): the pretrained SANE (in eval mode).
        layout (`TokenLayout`): the token layout of its zoo.
        normalization (`TokenNormalization`, *optional*): the zoo's normalization; `None` if tokens are raw weights.
        architecture (`str`): zoo registry name of the generated networks.
        anchor_model_kwargs (`list[dict]`): constructor arguments per anchor; a sample is built with those of its
            `anchor_index`.
        target_model_kwargs (`dict`, *optional*): overrides for every generated network (e.g. `{"num_classes": 5}`).
        reset_classifier (`bool`, *optional*, defaults to `False`): re-initialize the classifier (transfer).
        batch_size (`int`, *optional*): haloed windows per SANE forward pass (default: the model's, device-aware).
        init_seed (`int`, *optional*, defaults to 0): base seed of the fresh parts of every network (a reset
            classifier, untokenized entries). Each network adds a checksum of its own latents (or tokens), so the
            same sample always gets the same network, whether it is built while scoring candidates or at the end.
        precision (`str`, *optional*, defaults to `"fp32"`): compute precision of decoding (`decode_latents`).

    Example:

    ```python
    >>> decoder = ModelDecoder(sane, layout, normalization, "cnn_s", anchors.model_kwargs)
    >>> models = decoder(samples.latents, samples.anchor_index)        # list of ZooModel, eval mode
    ```
    """

    def __init__(
        self,
        sane: Any,
        layout: TokenLayout,
        normalization: TokenNormalization | None,
        architecture: str,
        anchor_model_kwargs: Sequence[Mapping[str, Any]],
        target_model_kwargs: Mapping[str, Any] | None = None,
        reset_classifier: bool = False,
        batch_size: int | None = None,
        init_seed: int = 0,
        precision: str = "fp32",
    ):
        if not anchor_model_kwargs:
            raise ValueError("`anchor_model_kwargs` needs the constructor arguments of at least one anchor.")
        self.sane = sane
        self.layout = layout
        self.normalization = normalization
        self.architecture = architecture
        self.anchor_model_kwargs = [dict(k) for k in anchor_model_kwargs]
        self.target_model_kwargs = dict(target_model_kwargs or {})
        self.reset_classifier = reset_classifier
        self.batch_size = batch_size
        self.init_seed = init_seed
        self.precision = precision
        self.positions = layout.positions
        self._target_layouts: dict[str, TokenLayout] = {}

    def model_kwargs(self, anchor_index: int) -> dict[str, Any]:
        """Constructor arguments of a network decoded for anchor `anchor_index`."""
        return {**self.anchor_model_kwargs[int(anchor_index)], **self.target_model_kwargs}

    def decode(self, latents: torch.Tensor, sequences: tuple[int, int] | None = None) -> torch.Tensor:
        """Latents `[n, S, L]` → normalized tokens `[n, S, T]` (rows `start .. stop - 1` with `sequences`)."""
        return decode_latents(self.sane, latents, self.positions, self.batch_size, self.precision, sequences)

    def seeds(self, values: torch.Tensor) -> list[int]:
        """Initialization seed of each network: `init_seed` plus a CRC32 of its latents or tokens `values[i]`."""
        return [
            (self.init_seed + zlib.crc32(v.detach().float().contiguous().cpu().numpy().tobytes())) % (2**63)
            for v in values
        ]

    def build(
        self,
        tokens: torch.Tensor,
        anchor_index: torch.Tensor | Sequence[int],
        seeds: Sequence[int] | None = None,
    ) -> list[nn.Module]:
        """Tokens `[n, S, T]` (normalized like the zoo) → `n` networks, sample `i` built for `anchor_index[i]`.

        `seeds` (one per network) seed the fresh parts; by default they are derived from the tokens.
        """
        seeds = self.seeds(tokens) if seeds is None else list(seeds)
        state_dict = tokens_to_state_dict(tokens, self.layout, self.normalization)
        models = []
        for i, anchor in enumerate(torch.as_tensor(anchor_index).tolist()):
            kwargs = self.model_kwargs(anchor)
            cache_key = json.dumps(kwargs, sort_keys=True, default=str)
            model, self._target_layouts[cache_key] = _build_model(
                self.architecture,
                kwargs,
                {key: value[i] for key, value in state_dict.items()},
                self.layout,
                self.reset_classifier,
                seeds[i],
                self._target_layouts.get(cache_key),
            )
            models.append(model)
        return models

    def __call__(
        self,
        latents: torch.Tensor,
        anchor_index: torch.Tensor | Sequence[int],
        sequences: tuple[int, int] | None = None,
    ) -> list[nn.Module]:
        """Latents `[n, S, L]` → `n` networks (haloed decode, de-normalize, detokenize, rebuild, strict load).

        With `sequences=(start, stop)`, only networks `start .. stop - 1`, each the same as in the full call (one
        process's share of a launch, `SaneGenerator.build`)."""
        first, stop = (0, len(latents)) if sequences is None else sequences
        tokens = self.decode(latents, sequences)
        return self.build(tokens, torch.as_tensor(anchor_index)[first:stop], seeds=self.seeds(latents[first:stop]))
