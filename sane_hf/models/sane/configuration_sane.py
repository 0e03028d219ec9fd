# Copyright 2026 The sane_hf developers. Licensed under the MIT license.
"""SANE model configuration.

This file is copied verbatim into every Hub repository of a SANE checkpoint (`trust_remote_code`), so it may import
only the standard library and `transformers`.
"""

from typing import Any

from transformers.utils import logging


try:  # transformers >= 5
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:  # pragma: no cover - transformers 4.x spelling
    from transformers.configuration_utils import PretrainedConfig as PreTrainedConfig


logger = logging.get_logger(__name__)

_PROJECTION_POOLINGS = ("flatten", "mean")


class SaneConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SaneModel`], the sequential autoencoder over weight tokens of SANE (Schürholt, Mahoney, Borth,
    "Towards Scalable and Versatile Weight Space Learning", ICML 2024).

    It holds only what is needed to rebuild the network; run settings (optimizer, zoo, augmentations) live in the
    training configs. The defaults are the ResNet-18 / CIFAR-100 setup of the paper with a 256-wide transformer.

    Args:
        token_size (`int`, *optional*, defaults to 289):
            Width `T` of one weight token (`ae:i_dim` upstream).
        d_model (`int`, *optional*, defaults to 256):
            Transformer width `D`. Must be even (each position table is `D/2` wide) and divisible by `n_heads`.
        n_heads (`int`, *optional*, defaults to 8):
            Number of attention heads per block.
        n_layers (`int`, *optional*, defaults to 4):
            Number of transformer blocks in the encoder.
        n_decoder_layers (`int`, *optional*):
            Number of transformer blocks in the decoder. Defaults to `n_layers`, as in SANE.
        latent_dim (`int`, *optional*, defaults to 128):
            Per-token latent size `L`.
        max_positions (`list[int]`, *optional*, defaults to `[55000, 100, 550]`):
            Sizes of the three learned position tables: global token index, layer index and row index within the
            layer. Every position coordinate fed to the model must be smaller than its table size.
        window_size (`int`, *optional*, defaults to 256):
            Training window length `W` (number of consecutive tokens per sample). Also the snippet length used to
            embed and decode full token sequences with haloed windows.
        halo_size (`int`, *optional*):
            Context tokens `h` added on each side of a content window when embedding or decoding a full sequence.
            Content windows are `window_size - 2 * halo_size` tokens long. Defaults to `window_size // 4`.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability used after the input embedding, inside attention and after each residual branch.
        projection_dim (`int`, *optional*, defaults to 30):
            Output size of the projection head that feeds the contrastive loss.
        projection_pooling (`str`, *optional*, defaults to `"flatten"`):
            Input of the projection head. `"flatten"` flattens the latent window to `window_size * latent_dim`
            features (the original SANE head, tied to the window length); `"mean"` averages the latents over the
            window, so the head works for any window length.
        bias (`bool`, *optional*, defaults to `False`):
            Whether the linear layers and LayerNorms inside the transformer blocks have a bias. SANE uses `False`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the LayerNorms in the transformer blocks.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initializer of linear and embedding weights (GPT-2 style).
        gamma (`float`, *optional*, defaults to 0.05):
            Weight of the contrastive loss in `gamma * L_contrast + (1 - gamma) * L_reconstruction`. Used by the
            training code.
        temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the NT-Xent contrastive loss. Used by the training code.

    Example:

    ```python
    >>> from sane_hf.models.sane import SaneConfig, SaneModel

    >>> # A SANE configuration with the default values
    >>> configuration = SaneConfig()
    >>> # A randomly initialized model from that configuration
    >>> model = SaneModel(configuration)
    >>> # Accessing the model configuration
    >>> configuration = model.config

    ```
    """

    model_type = "sane"

    # `temperature` is also a text-generation parameter: transformers 5 refuses to save a model config that holds one
    # unless the config declares it as a dataclass field. Declaring it keeps the upstream name of the NT-Xent
    # temperature (docs/method.md#objective).
    temperature: float = 0.1

    def __init__(
        self,
        token_size: int = 289,
        d_model: int = 256,
        n_heads: int = 8,
        n_layers: int = 4,
        n_decoder_layers: int | None = None,
        latent_dim: int = 128,
        max_positions: list[int] | tuple[int, ...] = (55000, 100, 550),
        window_size: int = 256,
        halo_size: int | None = None,
        dropout: float = 0.0,
        projection_dim: int = 30,
        projection_pooling: str = "flatten",
        bias: bool = False,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        gamma: float = 0.05,
        temperature: float = 0.1,
        **kwargs: Any,
    ):
        self.token_size = token_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.n_decoder_layers = n_layers if n_decoder_layers is None else n_decoder_layers
        self.latent_dim = latent_dim
        # A list (not a tuple) so that the JSON round trip gives back an equal config.
        self.max_positions = list(max_positions) if isinstance(max_positions, (list, tuple)) else max_positions
        self.window_size = window_size
        self.halo_size = window_size // 4 if halo_size is None and _is_int(window_size) else halo_size
        self.dropout = dropout
        self.projection_dim = projection_dim
        self.projection_pooling = projection_pooling
        self.bias = bias
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.gamma = gamma
        self.temperature = temperature
        self._validate_sane_fields()
        super().__init__(**kwargs)

    def __eq__(self, other: object) -> bool:
        # transformers 5 turns every config subclass into a dataclass; the generated `__eq__` would compare only the
        # base-class fields and call two SaneConfigs with different `d_model` equal. Compare all attributes instead,
        # as `PreTrainedConfig.__eq__` does.
        return isinstance(other, PreTrainedConfig) and self.__dict__ == other.__dict__

    __hash__ = None

    @property
    def content_size(self) -> int:
        """Content tokens per haloed window when embedding or decoding a full sequence: `window_size - 2 * halo_size`."""
        return self.window_size - 2 * self.halo_size

    def _validate_sane_fields(self) -> None:
        # Named `_validate_*` (not `validate_*`) so that transformers' `@strict` machinery does not pick it up: the
        # checks run once here, at construction, and raise ValueErrors that name the field.
        for name in ("token_size", "d_model", "n_heads", "n_layers", "n_decoder_layers", "latent_dim"):
            _require_positive_int(name, getattr(self, name))
        _require_positive_int("window_size", self.window_size)
        _require_positive_int("projection_dim", self.projection_dim)

        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"`d_model` must be divisible by `n_heads`, got d_model={self.d_model} and n_heads={self.n_heads}."
            )
        if self.d_model % 2 != 0:
            raise ValueError(
                f"`d_model` must be even because each position table is d_model/2 wide (SANE §3.2), "
                f"got d_model={self.d_model}."
            )

        if not isinstance(self.max_positions, list) or len(self.max_positions) != 3:
            raise ValueError(
                "`max_positions` must be a list of 3 positive ints (global index, layer index, row index table "
                f"sizes), got {self.max_positions!r}."
            )
        for i, size in enumerate(self.max_positions):
            _require_positive_int(f"max_positions[{i}]", size)
        if self.window_size > self.max_positions[0]:
            raise ValueError(
                f"`window_size` must be <= `max_positions[0]` (the global position table must cover a window), got "
                f"window_size={self.window_size} and max_positions[0]={self.max_positions[0]}."
            )

        if not _is_int(self.halo_size) or self.halo_size < 0:
            raise ValueError(
                f"`halo_size` must be an int >= 0 (or None for window_size // 4), got {self.halo_size!r}."
            )
        if self.window_size - 2 * self.halo_size < 1:
            raise ValueError(
                "`halo_size` leaves no content in a haloed window: window_size - 2 * halo_size must be >= 1, got "
                f"window_size={self.window_size} and halo_size={self.halo_size}."
            )

        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a float in [0, 1), got {self.dropout!r}.")
        if self.projection_pooling not in _PROJECTION_POOLINGS:
            raise ValueError(
                f"`projection_pooling` must be one of {list(_PROJECTION_POOLINGS)}, got {self.projection_pooling!r}."
            )
        if not isinstance(self.bias, bool):
            raise ValueError(f"`bias` must be a bool, got {self.bias!r}.")
        if not _is_number(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"`layer_norm_eps` must be a float > 0, got {self.layer_norm_eps!r}.")
        if not _is_number(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(f"`initializer_range` must be a float >= 0, got {self.initializer_range!r}.")
        if not _is_number(self.gamma) or not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"`gamma` must be a float in [0, 1], got {self.gamma!r}.")
        if not _is_number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"`temperature` must be a float > 0, got {self.temperature!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


# Copy this file into the repository on `save_pretrained` and write `auto_map` into config.json, so that
# `AutoConfig.from_pretrained(repo, trust_remote_code=True)` works without `sane_hf` installed.
SaneConfig.register_for_auto_class()

__all__ = ["SaneConfig"]
