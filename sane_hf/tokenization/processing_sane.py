"""The weight processor of a SANE: checkpoints in, model inputs out, and model outputs back into checkpoints.

What a tokenizer is to a language model, `SaneProcessor` is to SANE (docs/method.md#tokenization,
docs/method.md#normalization): it holds the token layout of the zoo architecture and the per-layer normalization
of the pretraining zoo, tokenizes and normalizes state_dicts into `tokens` / `positions`, and de-normalizes and
detokenizes tokens back into state_dicts. It is a transformers feature extractor: `save_pretrained` writes
`preprocessor_config.json` next to the SANE's weights and copies this file, `layout.py` and `normalization.py`
into the folder, so `AutoFeatureExtractor.from_pretrained(repo_id, trust_remote_code=True)` (or
`AutoProcessor`) works without `sane_hf` installed. It therefore imports only the standard library, numpy, torch,
transformers and its siblings.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .layout import HUB_OPTIONS, SANE_LAYOUT_NAME, TokenLayout, load_processor_part
from .normalization import SANE_NORMALIZATION_NAME, TokenNormalization


class SaneProcessor(FeatureExtractionMixin):
    """
    Tokenize + normalize checkpoints into SANE inputs, and de-normalize + detokenize SANE outputs into checkpoints.

    Args:
        layout (`TokenLayout` or `dict`): the token layout of the architecture (or its `to_dict()`).
        normalization (`TokenNormalization` or `dict`, *optional*): the per-layer normalization the SANE was trained
            with (or its `to_dict()`); without it tokens are used as they are.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf import SaneProcessor, TokenLayout, TokenNormalization
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> layout = TokenLayout.from_module(net, token_size=4)
    >>> processor = SaneProcessor(layout, TokenNormalization.fit(layout.tokenize(net.state_dict())[0], layout))
    >>> inputs = processor(net.state_dict())                  # a batch of one checkpoint
    >>> inputs["tokens"].shape, inputs["positions"].shape
    (torch.Size([1, 8, 4]), torch.Size([1, 8, 3]))
    >>> restored = processor.decode(inputs["tokens"][0])      # back into a state_dict
    >>> all(torch.allclose(restored[k], v, atol=1e-6) for k, v in net.state_dict().items())
    True

    ```
    """

    model_input_names = ["tokens", "positions"]

    def __init__(
        self,
        layout: TokenLayout | Mapping[str, Any],
        normalization: TokenNormalization | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        if isinstance(layout, Mapping):
            layout = TokenLayout.from_dict(layout)
        if not isinstance(layout, TokenLayout):
            raise TypeError(f"`layout` must be a TokenLayout or its dict, got {type(layout).__name__}.")
        if isinstance(normalization, Mapping):
            normalization = TokenNormalization.from_dict(normalization)
        if normalization is not None and not isinstance(normalization, TokenNormalization):
            raise TypeError(
                f"`normalization` must be a TokenNormalization, its dict or None, got {type(normalization).__name__}."
            )
        if normalization is not None:
            normalization._per_token(layout, torch.device("cpu"), torch.float32)  # raises if the layers differ
        kwargs.pop("feature_extractor_type", None)  # written by `to_dict`, re-derived from the class
        super().__init__(**kwargs)
        self.layout = layout
        self.normalization = normalization

    # ------------------------------------------------------------------------------------------------ the two maps
    def __call__(
        self,
        state_dicts: Mapping[str, torch.Tensor] | nn.Module | Sequence[Mapping[str, torch.Tensor] | nn.Module],
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenize and normalize one checkpoint or a list of them (docs/method.md#tokenization).

        Args:
            state_dicts (`Mapping[str, torch.Tensor]`, `nn.Module`, or a list of them): the checkpoint(s), each of
                the processor's architecture.
            return_tensors (`str`, *optional*, defaults to `"pt"`): only PyTorch tensors are supported.

        Returns:
            [`BatchFeature`] with `tokens` `(batch_size, num_tokens, token_size)` (normalized) and `positions`
            `(batch_size, num_tokens, 3)`: the inputs of `SaneModel.embed` / `haloed_encode`.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(
                f"SaneProcessor returns PyTorch tensors only: `return_tensors` must be 'pt', got {return_tensors!r}."
            )
        if isinstance(state_dicts, nn.Module | Mapping):
            state_dicts = [state_dicts]
        if isinstance(state_dicts, str | bytes) or not isinstance(state_dicts, Sequence) or not state_dicts:
            raise ValueError(
                f"Expected a state_dict, an nn.Module or a non-empty list of them, got {type(state_dicts).__name__}."
            )
        state_dicts = [sd.state_dict() if isinstance(sd, nn.Module) else sd for sd in state_dicts]
        tokens, _, positions = self.layout.tokenize(state_dicts)
        if self.normalization is not None:
            tokens = self.normalization.normalize(tokens, self.layout, out=tokens)
        return BatchFeature({"tokens": tokens, "positions": positions.contiguous()})

    def decode(
        self, tokens: torch.Tensor, reference: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """De-normalize and detokenize SANE outputs (e.g. `SaneModel.haloed_decode`) back into checkpoints.

        Args:
            tokens (`torch.Tensor`): `(num_tokens, token_size)` for one checkpoint, or `(batch_size, num_tokens,
                token_size)`; normalized like the processor's inputs.
            reference (`Mapping[str, torch.Tensor]`, *optional*): where to take the entries that are not tokenized
                (e.g. `num_batches_tracked`) from; defaults to the layout's stored values.

        Returns:
            A state_dict for `(num_tokens, token_size)` tokens, else a list of `batch_size` state_dicts, each with
            the architecture's keys, shapes and dtypes (tensors that own their memory).
        """
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"`tokens` must be a torch.Tensor, got {type(tokens).__name__}.")
        if self.normalization is not None:
            # `_check` inside gives the shape error; only real entries are de-normalized (padding stays zero).
            tokens = self.normalization.denormalize(tokens, self.layout)
        state = self.layout.detokenize(tokens, reference=reference, copy=True)
        if tokens.ndim == 2:
            return state
        return [{key: value[index] for key, value in state.items()} for index in range(tokens.shape[0])]

    @property
    def mask(self) -> torch.Tensor:
        """`(num_tokens, token_size)` bool: `True` on real entries, `False` on zero padding."""
        return self.layout.mask

    # ------------------------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The JSON content of `preprocessor_config.json`: the layout, the normalization and transformers' keys."""
        output = copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in ("layout", "normalization")})
        output["layout"] = self.layout.to_dict()
        output["normalization"] = None if self.normalization is None else self.normalization.to_dict()
        output["feature_extractor_type"] = type(self).__name__
        return output

    def to_json_string(self) -> str:
        """`to_dict` as JSON, keys in their order: the normalization's layers follow the layout's sequence order
        (transformers' default sorts the keys, which would reorder `layers.10` before `layers.2`)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def __repr__(self) -> str:
        normalization = "none" if self.normalization is None else self.normalization.mode
        return (
            f"{type(self).__name__}(num_tokens={self.layout.num_tokens}, token_size={self.layout.token_size}, "
            f"num_layers={self.layout.num_layers}, normalization={normalization})"
        )

    @classmethod
    def get_feature_extractor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The processor's `layout` and `normalization`, from `preprocessor_config.json` in a folder or Hub repository
        (through the Hub cache: `revision`, `subfolder`, `token`, ...) or, for checkpoints saved before the processor
        existed, from their `sane_layout.json` / `sane_normalization.json` sidecars.

        Unlike transformers' default it asks only for the files a SANE has: it does not probe `processor_config.json`
        first (a Hub answers 404 for a missing file, but a mirror may answer "repository not found")."""
        options = {key: kwargs.pop(key) for key in HUB_OPTIONS if key in kwargs}
        for private in ("_from_auto", "_from_pipeline"):
            kwargs.pop(private, None)
        source = pretrained_model_name_or_path
        layout = load_processor_part(source, "layout", SANE_LAYOUT_NAME, **options)
        if layout is None:
            raise OSError(
                f"{source} holds no SANE weight processor: neither preprocessor_config.json nor {SANE_LAYOUT_NAME}."
            )
        normalization = load_processor_part(source, "normalization", SANE_NORMALIZATION_NAME, **options)
        return {"layout": layout, "normalization": normalization}, kwargs


def load_sane_processor(source: str | os.PathLike, **hub_options: Any) -> SaneProcessor | None:
    """The weight processor saved with a SANE (a folder or Hub repository id), or `None` when the SANE was saved
    without one (neither `preprocessor_config.json` nor the older `sane_layout.json`).

    Args:
        source (`str` or `os.PathLike`): the SANE's folder or Hub repository id.
        hub_options: `revision`, `subfolder`, `token`, `cache_dir`, `force_download`, `local_files_only` or `proxies`.
    """
    if load_processor_part(source, "layout", SANE_LAYOUT_NAME, **hub_options) is None:
        return None
    return SaneProcessor.from_pretrained(source, **hub_options)


# Copy this file (and, through its relative imports, layout.py and normalization.py) into the folder on
# `save_pretrained` and write `auto_map` into preprocessor_config.json, so `AutoFeatureExtractor.from_pretrained(repo,
# trust_remote_code=True)` works without `sane_hf` installed.
SaneProcessor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["SaneProcessor", "load_sane_processor"]
