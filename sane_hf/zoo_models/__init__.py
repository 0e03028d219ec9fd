"""Architectures of model-zoo members: the networks SANE embeds and generates weights for.

Every class is an `nn.Module` + `huggingface_hub.PyTorchModelHubMixin` registered under a short name:

| name | class | default input | parameters (defaults) |
|---|---|---|---|
| `"cnn_s"` | `CNNSmall` | 1x28x28 | 2,464 |
| `"cnn3"` | `CNN3` | 3x32x32 | 10,853 |
| `"resnet18"` | `ResNet18` | 3x32x32 | 11,173,962 (10 classes) |
| `"resnet34"` | `ResNet34` | 3x32x32 | 21,282,122 (10 classes) |
| `"mlp"` | `MLP` | 64 features | 3,466 |

Example:

```python
>>> from sane_hf.zoo_models import build_zoo_model, list_zoo_architectures
>>> list_zoo_architectures()
['cnn3', 'cnn_s', 'mlp', 'resnet18', 'resnet34']
>>> build_zoo_model("cnn_s", input_size=8, padding="auto").num_parameters()
2464
```
"""

from .cnn import CNN3, CNNSmall
from .mlp import MLP
from .registry import (
    ACTIVATIONS,
    INITS,
    UPSTREAM_MODEL_TYPES,
    ZOO_ARCHITECTURE_KEY,
    ZooModel,
    build_zoo_model,
    get_zoo_architecture,
    list_zoo_architectures,
    load_zoo_model,
    register_zoo_model,
    zoo_params_to_kwargs,
)
from .resnet import ResNet, ResNet18, ResNet34
from .vit import ViTClassifier


__all__ = [
    "ACTIVATIONS",
    "CNN3",
    "INITS",
    "MLP",
    "UPSTREAM_MODEL_TYPES",
    "ZOO_ARCHITECTURE_KEY",
    "CNNSmall",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ViTClassifier",
    "ZooModel",
    "build_zoo_model",
    "get_zoo_architecture",
    "list_zoo_architectures",
    "load_zoo_model",
    "register_zoo_model",
    "zoo_params_to_kwargs",
]
