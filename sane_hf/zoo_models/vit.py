"""A tiny vision transformer zoo architecture, `ViTClassifier` ("vit"): transformers' `ViTForImageClassification`.

The zoo member is an ordinary transformers model (held as `model`, so its state_dict keys are `model.vit.*` and
`model.classifier.*`), built from a `ViTConfig` whose fields come from the zoo's constructor arguments. What it adds
is the zoo interface: `forward` returns logits (the tasks' training and evaluation loops take logits), the generating
factors `activation` / `dropout` / `init` are constructor arguments, and it registers as "vit".

Saved, it is a standard transformers repo (docs/architecture.md#transformer-zoos): `save_pretrained` writes the
transformers `config.json` (with `zoo_architecture: "vit"` and the constructor arguments as `sane_zoo_kwargs`, two
extra keys transformers keeps as plain attributes) and `model.safetensors` with transformers' own key names, so
`AutoModelForImageClassification.from_pretrained(folder_or_repo_id)` loads it without `sane_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.constants import CONFIG_NAME
from transformers import ViTConfig, ViTForImageClassification

from .registry import (
    INITS,
    ZOO_ARCHITECTURE_KEY,
    ZooModel,
    check_choice,
    check_float,
    check_int,
    check_real,
    init_conv_linear,
    register_zoo_model,
    resolve_activation,
)


# Extra key of `config.json` holding the zoo constructor arguments (transformers keeps unknown keys as attributes).
SANE_ZOO_KWARGS_KEY = "sane_zoo_kwargs"


@register_zoo_model("vit")
class ViTClassifier(ZooModel, tags=["vit", "transformers"], library_name="transformers"):
    """Vision transformer classifier over small images, a `transformers.ViTForImageClassification`.

    Args:
        in_channels (`int`, *optional*, defaults to 1): image channels.
        input_size (`int`, *optional*, defaults to 8): image height and width (8 = the scikit-learn digits).
        num_classes (`int`, *optional*, defaults to 10): number of output logits.
        patch_size (`int`, *optional*, defaults to 4): side of the square patches; must divide `input_size`.
        hidden_size (`int`, *optional*, defaults to 16): width of the residual stream.
        num_layers (`int`, *optional*, defaults to 2): transformer blocks.
        num_heads (`int`, *optional*, defaults to 2): attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 32): hidden units of each feed-forward block.
        activation (`str`, *optional*, defaults to `"gelu"`): feed-forward activation (`ViTConfig.hidden_act`), one
            of `sane_hf.zoo_models.ACTIVATIONS`.
        dropout (`float`, *optional*, defaults to 0.0): hidden and attention dropout, in [0, 1).
        init (`str`, *optional*, defaults to `"default"`): `"default"` keeps transformers' initialization;
            otherwise `torch.nn.init.<init>_` on every Linear/Conv2d weight.
        bias_init (`float`, *optional*, defaults to 0.01): constant for those biases when `init` is not default.

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import ViTClassifier
    >>> model = ViTClassifier()
    >>> model(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    ```
    """

    # The transformers auto class that loads a saved folder (generated-model cards show it in their usage snippet).
    transformers_auto_class = "AutoModelForImageClassification"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        input_size: int = 8,
        num_classes: int = 10,
        patch_size: int = 4,
        hidden_size: int = 16,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 32,
        activation: str = "gelu",
        dropout: float = 0.0,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__()

        name = type(self).__name__
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        self.input_size = check_int(name, "input_size", input_size, 1)
        self.num_classes = check_int(name, "num_classes", num_classes, 1)
        self.patch_size = check_int(name, "patch_size", patch_size, 1)
        if self.input_size % self.patch_size:
            raise ValueError(f"{name}: `patch_size`={patch_size} must divide `input_size`={input_size}.")
        hidden_size = check_int(name, "hidden_size", hidden_size, 1)
        num_heads = check_int(name, "num_heads", num_heads, 1)
        if hidden_size % num_heads:
            raise ValueError(f"{name}: `num_heads`={num_heads} must divide `hidden_size`={hidden_size}.")
        self.activation = resolve_activation(name, activation)
        self.dropout = check_float(name, "dropout", dropout, 0.0, 1.0)
        self.init = check_choice(name, "init", init, INITS)
        self.bias_init = check_real(name, "bias_init", bias_init)
        config = ViTConfig(
            image_size=self.input_size,
            patch_size=self.patch_size,
            num_channels=self.in_channels,
            hidden_size=hidden_size,
            num_hidden_layers=check_int(name, "num_layers", num_layers, 1),
            num_attention_heads=num_heads,
            intermediate_size=check_int(name, "intermediate_size", intermediate_size, 1),
            hidden_act=self.activation,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            num_labels=self.num_classes,
        )
        self.model = ViTForImageClassification(config)
        init_conv_linear(self.model.modules(), self.init, self.bias_init)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images `[batch, in_channels, input_size, input_size]` → logits `[batch, num_classes]`."""
        return self.model(pixel_values=pixel_values).logits

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any) -> None:
        """Write a standard transformers repo folder: `config.json` and `model.safetensors` (transformers' names).

        `config.json` also records `zoo_architecture` and the constructor arguments (`sane_zoo_kwargs`), so
        `load_zoo_model` rebuilds this class; `AutoModelForImageClassification` ignores both. A `README.md` already in
        the folder (a generated model's card) is kept. `config` and pushing options are not supported here; push
        the folder with `huggingface_hub.upload_folder`.
        """
        if config is not None or kwargs.get("push_to_hub"):
            raise ValueError(f"{type(self).__name__}.save_pretrained takes no `config` and does not push.")
        hf_config = self.model.config
        setattr(hf_config, ZOO_ARCHITECTURE_KEY, self.zoo_name)
        setattr(hf_config, SANE_ZOO_KWARGS_KEY, self.zoo_config)
        self.model.save_pretrained(save_directory)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> ViTClassifier:

        hub = {"revision": revision, "cache_dir": cache_dir, "force_download": force_download, "token": token}
        hub["local_files_only"] = local_files_only
        if Path(model_id).is_dir():
            config_file = Path(model_id) / CONFIG_NAME
        else:
            config_file = Path(huggingface_hub.hf_hub_download(model_id, CONFIG_NAME, **hub))
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if SANE_ZOO_KWARGS_KEY not in config:
            raise ValueError(
                f"{model_id}: config.json has no {SANE_ZOO_KWARGS_KEY!r} entry; it was not saved by {cls.__name__}."
            )
        model = cls(**config[SANE_ZOO_KWARGS_KEY])
        # transformers' loader: it maps the stored key names onto the module's (they differ across versions).
        loaded = ViTForImageClassification.from_pretrained(model_id, **hub)
        model.model.load_state_dict(loaded.state_dict(), strict=strict)
        model.model.to(map_location)
        return model.eval()  # as the mixin returns the other zoo models
