"""A multi-layer perceptron zoo architecture, `MLP` ("mlp").

Laid out like the zoo generators' `MLP` (upstream `src/SANE/models/def_net.py`): one `nn.Sequential` called
`module_list` of Linear → activation [→ Dropout] blocks and a final Linear, with Dropout modules only when
`dropout > 0`. The input is flattened in `forward` (not by a module), so the keys are `module_list.<i>.*` with
the first Linear at index 0.
"""

import math

import torch
from torch import nn

from .registry import (
    INITS,
    ZooModel,
    check_choice,
    check_float,
    check_int,
    check_int_list,
    check_real,
    init_conv_linear,
    make_activation,
    register_zoo_model,
    resolve_activation,
)


@register_zoo_model("mlp")
class MLP(ZooModel, tags=["mlp"]):
    """Fully connected classifier over flattened inputs.

    Args:
        in_features (`int`, *optional*, defaults to 64):
            Number of input features after flattening (64 = the 8x8 scikit-learn digits).
        hidden_sizes (`list[int]`, *optional*, defaults to `[32, 32]`):
            Widths of the hidden layers; empty for a linear classifier.
        num_classes (`int`, *optional*, defaults to 10):
            Number of output logits.
        activation (`str`, *optional*, defaults to `"relu"`):
            One of `"relu"`, `"tanh"`, `"gelu"`, `"sigmoid"`, `"leaky_relu"` (or `"leakyrelu"`), `"silu"`.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability after each hidden activation, in [0, 1).
        init (`str`, *optional*, defaults to `"default"`):
            Weight initialization of the linears: `"default"` (PyTorch's) or one of `"kaiming_uniform"`,
            `"kaiming_normal"`, `"xavier_uniform"`, `"xavier_normal"`, `"uniform"`, `"normal"`.
        bias_init (`float`, *optional*, defaults to 0.01):
            Constant for all biases when `init` is not `"default"` (0.01 in the zoo generators).

    Example:

    ```python
    >>> import torch
    >>> from sane_hf.zoo_models import MLP
    >>> model = MLP()
    >>> model.num_parameters()
    3466
    >>> model(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    ```
    """

    def __init__(
        self,
        *,
        in_features: int = 64,
        hidden_sizes: list[int] | tuple[int, ...] = (32, 32),
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
        bias_init: float = 0.01,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_features = check_int(name, "in_features", in_features, 1)
        self.hidden_sizes = check_int_list(name, "hidden_sizes", hidden_sizes, 1)
        self.num_classes = check_int(name, "num_classes", num_classes, 1)
        self.activation = resolve_activation(name, activation)
        self.dropout = check_float(name, "dropout", dropout, 0.0, 1.0)
        self.init = check_choice(name, "init", init, INITS)
        self.bias_init = check_real(name, "bias_init", bias_init)

        layers: list[nn.Module] = []
        features = self.in_features
        for hidden in self.hidden_sizes:
            layers.append(nn.Linear(features, hidden))
            layers.append(make_activation(self.activation))
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            features = hidden
        layers.append(nn.Linear(features, self.num_classes))
        self.module_list = nn.Sequential(*layers)

        init_conv_linear(self.module_list, self.init, self.bias_init)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Flatten `inputs` `[batch, ...]` to `[batch, in_features]` and return logits `[batch, num_classes]`."""
        if inputs.ndim < 2 or math.prod(inputs.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP expects input of shape [batch, ...] with {self.in_features} features per sample, "
                f"got {list(inputs.shape)}."
            )
        return self.module_list(inputs.flatten(1))
