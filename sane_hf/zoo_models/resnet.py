"""ResNets of the model zoos: `ResNet18` ("resnet18"), `ResNet34` ("resnet34") and the generic `ResNet`.

The zoos' ResNets are torchvision's `ResNet` with `BasicBlock`, a CIFAR stem (3x3 stride-1 conv1, no max-pool) and
a custom class count (upstream `src/SANE/models/def_net.py`; docs/method.md#tokenization). This is a reimplementation that
does not need torchvision: module names, registration order and thus state_dict keys and their order are the
same as torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ..., `layerX.0.downsample.{0,1}`, ..., `fc`), because
SANE tokenizes a checkpoint in state_dict order (docs/method.md#tokenization).
"""

import torch
from torch import nn

from .registry import (
    INITS,
    ZooModel,
    check_choice,
    check_int,
    check_int_list,
    check_real,
    init_conv_linear,
    register_zoo_model,
)


STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18/34, with torchvision's attribute names.

    Args:
        in_planes (`int`):
            Input channels.
        planes (`int`):
            Output channels of both convs.
        stride (`int`, *optional*, defaults to 1):
            Stride of the first conv; with `stride != 1` or `in_planes != planes` the shortcut is a 1x1 conv + BN
            called `downsample`.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        # Attribute assignment order fixes the state_dict order: conv1, bn1, conv2, bn2, downsample (torchvision).
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(ZooModel, tags=["resnet"]):
    """ResNet with `BasicBlock`s and torchvision-compatible state_dict keys; not registered itself.

    Use `ResNet18` / `ResNet34` (registered as "resnet18" / "resnet34") for the zoo architectures; this class takes
    the number of blocks per stage as `layers`.

    Args:
        layers (`list[int]`, *optional*, defaults to `[2, 2, 2, 2]`):
            Number of `BasicBlock`s in `layer1`..`layer4`.
        num_classes (`int`, *optional*, defaults to 10):
            Number of output logits (`fc` out features).
        in_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        width (`int`, *optional*, defaults to 64):
            Channels of the stem and `layer1`; `layer2`..`layer4` use 2x, 4x, 8x. 64 is torchvision's ResNet;
            small values (e.g. 8) give tiny models for tests.
        stem (`str`, *optional*, defaults to `"cifar"`):
            `"cifar"`: 3x3 stride-1 `conv1` and no max-pool (the SANE/model-zoo ResNets). `"imagenet"`: torchvision's
            7x7 stride-2 `conv1` followed by a 3x3 stride-2 max-pool. Both have the same state_dict keys.
        zero_init_residual (`bool`, *optional*, defaults to `False`):
            Zero the last BN weight (`bn2.weight`) of every block, as torchvision's option of the same name.
        init (`str`, *optional*, defaults to `"default"`):
            `"default"` is torchvision's initialization (Kaiming-normal fan-out convs, BN weight 1 and bias 0,
            PyTorch's default `fc`). Any other name from `INITS` re-initializes all conv and `fc` weights with
            `torch.nn.init.<init>_` (the ResNet zoos use `"kaiming_uniform"`); BN stays at 1 and 0.
        bias_init (`float`, *optional*, defaults to 0.01):
            Constant for the `fc` bias when `init` is not `"default"` (0.01 in the zoo generators).
    """

    def __init__(
        self,
        *,
        layers: list[int] | tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "cifar",
        zero_init_residual: bool = False,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.layers = check_int_list(name, "layers", layers, 1, length=4)
        self.num_classes = check_int(name, "num_classes", num_classes, 1)
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        self.width = check_int(name, "width", width, 1)
        self.stem = check_choice(name, "stem", stem, STEMS)
        if not isinstance(zero_init_residual, bool):
            raise ValueError(f"{name}: `zero_init_residual` must be a bool, got {zero_init_residual!r}.")
        self.zero_init_residual = zero_init_residual
        self.init = check_choice(name, "init", init, INITS)
        self.bias_init = check_real(name, "bias_init", bias_init)

        # Registration order = torchvision's: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc.
        if self.stem == "cifar":
            self.conv1 = nn.Conv2d(self.in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(self.in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # The zoo ResNets replace torchvision's max-pool by an identity (upstream `def_net.py`); no parameters
        # either way, so the keys do not change.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if self.stem == "imagenet" else nn.Identity()
        in_planes = width
        for stage, num_blocks in enumerate(self.layers):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, self.num_classes)

        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        if self.init == "default":
            # torchvision `ResNet.__init__`: Kaiming-normal (fan-out, ReLU gain) convs; BN weight 1 / bias 0 are
            # already PyTorch's BN defaults; `fc` keeps PyTorch's Linear default.
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init_conv_linear(self.modules(), self.init, self.bias_init)
        if self.zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map an image batch `[batch, in_channels, height, width]` to logits `[batch, num_classes]`."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape [batch, {self.in_channels}, height, width], "
                f"got {list(pixel_values.shape)}."
            )
        hidden_states = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        hidden_states = self.layer4(self.layer3(self.layer2(self.layer1(hidden_states))))
        return self.fc(torch.flatten(self.avgpool(hidden_states), 1))


@register_zoo_model("resnet18")
class ResNet18(ResNet, tags=["resnet18"]):
    """ResNet-18 (`BasicBlock`, layers `[2, 2, 2, 2]`), the architecture of SANE's ResNet zoos.

    With the defaults (CIFAR stem, width 64) it has 11,173,962 parameters for 10 classes and 11,220,132 for 100
    (the paper's zoo appendix); with `stem="imagenet", num_classes=1000` it has torchvision's 11,689,512.
    See `ResNet` for the arguments (all but `layers`).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import ResNet18
    >>> model = ResNet18(num_classes=100, width=8)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    ```
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "cifar",
        zero_init_residual: bool = False,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__(
            layers=(2, 2, 2, 2),
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            stem=stem,
            zero_init_residual=zero_init_residual,
            init=init,
            bias_init=bias_init,
        )


@register_zoo_model("resnet34")
class ResNet34(ResNet, tags=["resnet34"]):
    """ResNet-34 (`BasicBlock`, layers `[3, 4, 6, 3]`).

    With `stem="imagenet", num_classes=1000` it has torchvision's 21,797,672 parameters. See `ResNet` for the
    arguments (all but `layers`).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import ResNet34
    >>> model = ResNet34(width=8)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    ```
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "cifar",
        zero_init_residual: bool = False,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__(
            layers=(3, 4, 6, 3),
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            stem=stem,
            zero_init_residual=zero_init_residual,
            init=init,
            bias_init=bias_init,
        )
