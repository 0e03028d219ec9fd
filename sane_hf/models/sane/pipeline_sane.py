# Copyright 2026 The sane_hf developers. Licensed under the MIT license.
"""The `feature-extraction` pipeline of a SANE: checkpoints in, one embedding per checkpoint out.

A SANE repository declares it in `config.json` (`custom_pipelines`) and ships this file, so
`pipeline("feature-extraction", model=repo_id, trust_remote_code=True)` embeds networks (docs/method.md#probes: haloed
encoding of the whole token sequence, then the mean over tokens), with the repository's weight processor turning each
checkpoint into tokens. Like `modeling_sane.py` it imports only the standard library, torch, transformers and
safetensors.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Pipeline


# What `config.custom_pipelines` holds for a SANE (see `SaneEmbeddingPipeline`).
SANE_CUSTOM_PIPELINES = {
    "feature-extraction": {"impl": "pipeline_sane.SaneEmbeddingPipeline", "pt": ["AutoModel"], "type": "multimodal"}
}
_WEIGHTS_NAME = "model.safetensors"


def _read_checkpoint(inputs: Any) -> Mapping[str, torch.Tensor]:
    """A state_dict from a state_dict, an `nn.Module`, a `.safetensors` file or a folder holding model.safetensors."""
    if isinstance(inputs, nn.Module):
        return inputs.state_dict()
    if isinstance(inputs, Mapping):
        return inputs
    if isinstance(inputs, str | os.PathLike):
        path = Path(inputs)
        file = path / _WEIGHTS_NAME if path.is_dir() else path
        if file.suffix == ".safetensors" and file.is_file():
            return load_file(file)
        raise ValueError(f"{inputs}: expected a .safetensors checkpoint or a folder holding {_WEIGHTS_NAME}.")
    raise ValueError(
        f"A SANE embeds checkpoints: expected a state_dict, an nn.Module or a path, got {type(inputs).__name__}."
    )


class SaneEmbeddingPipeline(Pipeline):
    """
    Embed checkpoints with a SANE: each input (a state_dict, an `nn.Module`, a `.safetensors` file or a folder with
    `model.safetensors`, of the architecture the SANE was trained on) gives a `(latent_dim,)` tensor.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> embed = pipeline("feature-extraction", model="org/sane-cnn-digits", trust_remote_code=True)
    >>> embed("checkpoints/model_000/model.safetensors").shape
    torch.Size([32])
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = True  # the SANE's weight processor (`preprocessor_config.json`)
    _load_tokenizer = False

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(f"The SANE embedding pipeline takes no options, got {sorted(kwargs)}.")
        return {}, {}, {}

    def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
        if self.feature_extractor is None:
            raise ValueError(
                "The SANE embedding pipeline needs the SANE's weight processor (preprocessor_config.json): pass "
                "`feature_extractor=` or load a repository that has one."
            )
        return dict(self.feature_extractor(_read_checkpoint(inputs)))

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"embedding": self.model.embed(model_inputs["tokens"], model_inputs["positions"])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model_outputs["embedding"][0]


__all__ = ["SANE_CUSTOM_PIPELINES", "SaneEmbeddingPipeline"]
