"""The small CNNs of the model zoos: `CNNSmall` ("cnn_s") and `CNN3` ("cnn3").

Both follow the zoo generators' `CNN` and `CNN3` classes (upstream `src/SANE/models/def_net.py`, summarized in
the paper's zoo appendix and docs/method.md#tokenization): conv → max-pool → activation blocks, then two linear layers, all kept in
one `nn.Sequential` called `module_list`. The module indices inside `module_list` are part of the state_dict keys,
so they are laid out exactly as upstream and zoo checkpoints load without renaming.

Unlike upstream, the input size is an argument: the flatten size is computed from it, and `padding` (an int or
`"auto"`) lets the same layer stack run on inputs smaller than 28x28/32x32, e.g. the 8x8 scikit-learn digits.
"""

import logging
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from .registry import (
    INITS,
    ZooModel,
    check_choice,
    check_float,
    check_int,
    check_real,
    init_conv_linear,
    make_activation,
    register_zoo_model,
    resolve_activation,
)


logger = logging.getLogger(__name__)

# Width of the hidden linear layer of both CNNs (upstream `def_net.py`).
_HIDDEN_FEATURES = 20
# Upper bound when searching the smallest usable input size for an error message.
_MAX_SEARCHED_INPUT_SIZE = 4096


class ConvStage(NamedTuple):
    """One conv block of a zoo CNN: `Conv2d(k, stride 1)` [→ `MaxPool2d(2)`] → activation [→ `Dropout`]."""

    out_channels: int
    kernel_size: int
    pool: bool
    dropout: bool


def _trace_spatial_size(
    stages: tuple[ConvStage, ...], input_size: int, paddings: tuple[int, ...]
) -> tuple[int, int | None]:
    """Follow the square feature-map size through `stages`.

    Returns `(final_size, None)` if every stage keeps at least one pixel, else `(size, index)` of the first stage
    whose conv or pool output is empty.
    """
    size = input_size
    for index, (stage, pad) in enumerate(zip(stages, paddings)):
        size = size + 2 * pad - stage.kernel_size + 1
        if stage.pool and size >= 1:
            size //= 2
        if size < 1:
            return size, index
    return size, None


def _smallest_input_size(stages: tuple[ConvStage, ...], paddings: tuple[int, ...]) -> int | None:
    for size in range(1, _MAX_SEARCHED_INPUT_SIZE + 1):
        if _trace_spatial_size(stages, size, paddings)[1] is None:
            return size
    return None


def resolve_padding(
    cls_name: str, stages: tuple[ConvStage, ...], input_size: int, padding: Any
) -> tuple[tuple[int, ...], int]:
    """Turn the `padding` argument into one padding per conv and return it with the final feature-map size.

    `padding="auto"` keeps the zoo architecture unchanged (no padding) whenever the input is large enough, and
    otherwise pads every conv by `kernel_size // 2` ("same"-style; a 2x2 conv then grows the map by one pixel).

    Raises:
        `ValueError`: `padding` is neither an int >= 0 nor `"auto"`, or the input is too small even with padding.
    """
    no_padding = tuple(0 for _ in stages)
    same_padding = tuple(stage.kernel_size // 2 for stage in stages)
    if padding == "auto":
        candidates = [no_padding, same_padding]
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        candidates = [tuple(padding for _ in stages)]
    else:
        raise ValueError(f"{cls_name}: `padding` must be an int >= 0 or 'auto', got {padding!r}.")

    for paddings in candidates:
        size, failed_stage = _trace_spatial_size(stages, input_size, paddings)
        if failed_stage is None:
            return paddings, size

    smallest_auto = _smallest_input_size(stages, same_padding)
    hint = f"The smallest input_size that works with padding='auto' is {smallest_auto}."
    if padding != "auto":
        hint = f"The smallest input_size for padding={padding!r} is {_smallest_input_size(stages, paddings)}. " + hint
    raise ValueError(
        f"{cls_name}: `input_size`={input_size} is too small for this architecture: the feature map is empty after "
        f"conv stage {failed_stage + 1} of {len(stages)} with paddings {list(paddings)}. {hint}"
    )


class _ZooCNN(ZooModel, tags=["cnn"]):
    """Shared construction, initialization and forward pass of the zoo CNNs; subclasses set the class variables."""

    conv_stages: ClassVar[tuple[ConvStage, ...]]
    # CNN3 keeps its Dropout modules even at p=0 while the small CNN only adds them for p > 0. That shifts the
    # module indices, hence the state_dict keys of zoo checkpoints (upstream `def_net.py`), so it is reproduced.
    always_dropout: ClassVar[bool]

    def __init__(
        self,
        *,
        in_channels: int,
        input_size: int,
        padding: int | str,
        num_classes: int,
        activation: str,
        dropout: float,
        init: str,
        bias_init: float,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        self.input_size = check_int(name, "input_size", input_size, 1)
        self.num_classes = check_int(name, "num_classes", num_classes, 1)
        self.activation = resolve_activation(name, activation)
        self.dropout = check_float(name, "dropout", dropout, 0.0, 1.0)
        self.init = check_choice(name, "init", init, INITS)
        self.bias_init = check_real(name, "bias_init", bias_init)
        self.padding = padding
        self.paddings, final_size = resolve_padding(name, self.conv_stages, self.input_size, padding)
        if padding == "auto":
            logger.debug("%s: padding='auto' resolved to %s for input_size=%d", name, self.paddings, input_size)
        self.feature_size = self.conv_stages[-1].out_channels * final_size * final_size

        use_dropout = self.always_dropout or self.dropout > 0
        layers: list[nn.Module] = []
        channels = self.in_channels
        for stage, pad in zip(self.conv_stages, self.paddings):
            layers.append(nn.Conv2d(channels, stage.out_channels, stage.kernel_size, padding=pad))
            if stage.pool:
                layers.append(nn.MaxPool2d(2, 2))
            # Upstream pools *before* the activation; the order is kept so activations match zoo checkpoints.
            layers.append(make_activation(self.activation))
            if stage.dropout and use_dropout:
                layers.append(nn.Dropout(self.dropout))
            channels = stage.out_channels
        layers.append(nn.Flatten())
        layers.append(nn.Linear(self.feature_size, _HIDDEN_FEATURES))
        layers.append(make_activation(self.activation))
        if use_dropout:
            layers.append(nn.Dropout(self.dropout))
        layers.append(nn.Linear(_HIDDEN_FEATURES, self.num_classes))
        self.module_list = nn.Sequential(*layers)

        init_conv_linear(self.module_list, self.init, self.bias_init)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map an image batch `[batch, in_channels, input_size, input_size]` to logits `[batch, num_classes]`."""
        expected = (self.in_channels, self.input_size, self.input_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects input of shape [batch, {', '.join(map(str, expected))}], "
                f"got {list(pixel_values.shape)}."
            )
        return self.module_list(pixel_values)


@register_zoo_model("cnn_s")
class CNNSmall(_ZooCNN, tags=["cnn-s"]):
    """The small CNN of the model zoos (MNIST, Fashion-MNIST, SVHN, USPS zoos; "CNN-s", upstream class `CNN`).

    Layers (28x28x1 input, 2,464 parameters): Conv(1→8, 5) → MaxPool(2) → act [→ Dropout] → Conv(8→6, 5) →
    MaxPool(2) → act [→ Dropout] → Conv(6→4, 2) → act → Flatten(36) → Linear(36→20) → act [→ Dropout] →
    Linear(20→10). The Dropout modules exist only when `dropout > 0`, as upstream, so the state_dict keys are
    `module_list.{0,3,6,9,11}.*` without dropout and `module_list.{0,4,8,11,14}.*` with it.

    Args:
        in_channels (`int`, *optional*, defaults to 1):
            Number of input channels.
        input_size (`int`, *optional*, defaults to 28):
            Height and width of the (square) input images; sets the flatten size.
        padding (`int` or `str`, *optional*, defaults to 0):
            Zero padding of every conv, or `"auto"`: none if the input is large enough, else `kernel_size // 2`.
            `padding="auto"` with `input_size=8` runs on scikit-learn digits.
        num_classes (`int`, *optional*, defaults to 10):
            Number of output logits.
        activation (`str`, *optional*, defaults to `"relu"`):
            One of `"relu"`, `"tanh"`, `"gelu"`, `"sigmoid"`, `"leaky_relu"` (or `"leakyrelu"`), `"silu"`.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability after the activations, in [0, 1).
        init (`str`, *optional*, defaults to `"default"`):
            Weight initialization of convs and linears: `"default"` (PyTorch's) or one of `"kaiming_uniform"`,
            `"kaiming_normal"`, `"xavier_uniform"`, `"xavier_normal"`, `"uniform"`, `"normal"`
            (`torch.nn.init.<init>_` with default arguments, as the zoo generators do).
        bias_init (`float`, *optional*, defaults to 0.01):
            Constant for all biases when `init` is not `"default"` (0.01 in the zoo generators).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import CNNSmall
    >>> model = CNNSmall()
    >>> model.num_parameters()
    2464
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> CNNSmall(input_size=8, padding="auto").paddings
    (2, 2, 1)
    ```
    """

    conv_stages = (
        ConvStage(out_channels=8, kernel_size=5, pool=True, dropout=True),
        ConvStage(out_channels=6, kernel_size=5, pool=True, dropout=True),
        ConvStage(out_channels=4, kernel_size=2, pool=False, dropout=False),
    )
    always_dropout = False

    def __init__(
        self,
        *,
        in_channels: int = 1,
        input_size: int = 28,
        padding: int | str = 0,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            input_size=input_size,
            padding=padding,
            num_classes=num_classes,
            activation=activation,
            dropout=dropout,
            init=init,
            bias_init=bias_init,
        )


@register_zoo_model("cnn3")
class CNN3(_ZooCNN, tags=["cnn3"]):
    """The CIFAR-10 zoo CNN used by SANE ("CNN-l", upstream class `CNN3`; docs/method.md#tokenization).

    Layers (32x32x3 input, 10,853 parameters), one `nn.Sequential` `module_list` with indices 0..16:
    Conv(3→16, 3) → MaxPool(2) → act → Dropout | Conv(16→32, 3) → MaxPool(2) → act → Dropout |
    Conv(32→15, 3) → MaxPool(2) → act → Dropout | Flatten(60) → Linear(60→20) → act → Dropout → Linear(20→10).
    The Dropout modules are always present (also at `dropout=0`), so the state_dict keys are always
    `module_list.{0,4,8,13,16}.{weight,bias}`.

    Args:
        in_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        input_size (`int`, *optional*, defaults to 32):
            Height and width of the (square) input images; sets the flatten size.
        padding (`int` or `str`, *optional*, defaults to 0):
            Zero padding of every conv, or `"auto"`: none if the input is large enough, else 1 ("same").
            `padding="auto"` with `in_channels=1, input_size=8` runs on scikit-learn digits.
        num_classes (`int`, *optional*, defaults to 10):
            Number of output logits.
        activation (`str`, *optional*, defaults to `"relu"`):
            One of `"relu"`, `"tanh"`, `"gelu"`, `"sigmoid"`, `"leaky_relu"` (or `"leakyrelu"`), `"silu"`.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability after every activation, in [0, 1).
        init (`str`, *optional*, defaults to `"default"`):
            Weight initialization of convs and linears: `"default"` (PyTorch's) or one of `"kaiming_uniform"`,
            `"kaiming_normal"`, `"xavier_uniform"`, `"xavier_normal"`, `"uniform"`, `"normal"`
            (`torch.nn.init.<init>_` with default arguments, as the zoo generators do).
        bias_init (`float`, *optional*, defaults to 0.01):
            Constant for all biases when `init` is not `"default"` (0.01 in the zoo generators).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import CNN3
    >>> model = CNN3()
    >>> model.num_parameters()
    10853
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    ```
    """

    conv_stages = (
        ConvStage(out_channels=16, kernel_size=3, pool=True, dropout=True),
        ConvStage(out_channels=32, kernel_size=3, pool=True, dropout=True),
        ConvStage(out_channels=15, kernel_size=3, pool=True, dropout=True),
    )
    always_dropout = True

    def __init__(
        self,
        *,
        in_channels: int = 3,
        input_size: int = 32,
        padding: int | str = 0,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            input_size=input_size,
            padding=padding,
            num_classes=num_classes,
            activation=activation,
            dropout=dropout,
            init=init,
            bias_init=bias_init,
        )
