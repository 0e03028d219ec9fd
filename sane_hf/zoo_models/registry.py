"""Registry of model-zoo architectures and the `ZooModel` base class they share.

SANE learns from, and generates, checkpoints of small networks trained in "model zoos" (docs/method.md#tokenization).
Generated weights are only useful once they are loaded into the right architecture, so every architecture a zoo
can contain is a `ZooModel` registered here under a short name (timm's `@register_model` pattern), and is a
`PyTorchModelHubMixin` so a generated network is pushed with `model.push_to_hub(...)`: one commit with `config.json`
+ `model.safetensors` + `README.md`.

This module also holds the small helpers the architectures share (activations, weight initialization, argument
validation), so that `cnn.py`, `mlp.py` and `resnet.py` only describe their layers.
"""

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download, snapshot_download
from huggingface_hub.constants import CONFIG_NAME
from torch import nn

from ..utils.checks import safetensors_shapes


logger = logging.getLogger(__name__)

SANE_PAPER_URL = "https://arxiv.org/abs/2406.09997"
# The official SANE code (HSG-AIML/SANE), where the zoo architectures come from (`src/SANE/models/def_net.py`).
SANE_CODE_URL = "https://github.com/HSG-AIML/SANE"
ZOO_MODEL_TAGS = ("sane", "sane-zoo-model")
# Extra key written next to the constructor arguments in `config.json`, so `load_zoo_model` can pick the class.
# `from_pretrained` only forwards keys that are `__init__` parameters, so the key never reaches a constructor.
ZOO_ARCHITECTURE_KEY = "zoo_architecture"

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu", "silu")
# Zoo `params.json` files spell the leaky ReLU "leakyrelu" (`model::nlin`, upstream `def_net.py`).
_ACTIVATION_ALIASES = {"leakyrelu": "leaky_relu"}
_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}

# "default" keeps PyTorch's (or, for ResNets, torchvision's) initialization. Every other name is the
# `torch.nn.init.<name>_` function applied with its default arguments, as the zoo generators do (`init_type` in
# upstream `def_net.py`). Note that "uniform" and "normal" are U(0, 1) and N(0, 1) there, not scaled.
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "uniform", "normal")

ZOO_MODEL_CARD_TEMPLATE = r"""---
# For reference on model card metadata, see the spec: https://github.com/huggingface/hub-docs/blob/main/modelcard.md?plain=1
{{ card_data }}
---

# {{ model_name | default("SANE zoo model", true) }}

A `{{ architecture }}` network (zoo architecture `{{ zoo_name | default("unregistered", true) }}`, {{ num_parameters }} parameters) of the kind SANE learns from and generates, saved with `sane_hf` through `PyTorchModelHubMixin`.
{% if description %}
{{ description }}
{% endif %}
## Usage

```python
from sane_hf.zoo_models import {{ architecture }}

model = {{ architecture }}.from_pretrained("{{ repo_id | default("<repo_id>", true) }}")
```

## Configuration

```json
{{ model_config }}
```

## Links

- SANE code (official): {{ repo_url | default("[More Information Needed]", true) }}
- Paper: {{ paper_url | default("[More Information Needed]", true) }}
{% if docs_url %}- Docs: {{ docs_url }}
{% endif %}
## Citation

```bibtex
@inproceedings{schuerholt2024sane,
  title     = {Towards Scalable and Versatile Weight Space Learning},
  author    = {Sch{\"u}rholt, Konstantin and Mahoney, Michael W. and Borth, Damian},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year      = {2024},
  eprint    = {2406.09997},
  archivePrefix = {arXiv}
}
```
"""


# ---------------------------------------------------------------------------------------------------------------
# Argument validation (name the argument, the value received and what is allowed).
# Types are checked strictly: `PyTorchModelHubMixin` silently leaves non-JSON values out of `config.json`, so a
# `numpy.int64` accepted here would come back as the default value after `from_pretrained`.
# ---------------------------------------------------------------------------------------------------------------


def _owner(cls_name: str, arg: str) -> str:
    return f"{cls_name}: `{arg}`"


def check_int(cls_name: str, arg: str, value: Any, minimum: int) -> int:
    """Return `value` if it is a Python `int` (not a `bool`) that is at least `minimum`, else raise `ValueError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{_owner(cls_name, arg)} must be an int >= {minimum}, got {value!r}.")
    return value


def check_float(cls_name: str, arg: str, value: Any, low: float, high: float, high_inclusive: bool = False) -> float:
    """Return `value` as a `float` if it is a real number in `[low, high)` (or `[low, high]`), else raise."""
    interval = f"[{low}, {high}{']' if high_inclusive else ')'}"
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{_owner(cls_name, arg)} must be a float in {interval}, got {value!r}.")
    if value < low or value > high or (value == high and not high_inclusive):
        raise ValueError(f"{_owner(cls_name, arg)} must be a float in {interval}, got {value!r}.")
    return float(value)


def check_real(cls_name: str, arg: str, value: Any) -> float:
    """Return `value` as a `float` if it is a finite real number, else raise `ValueError`."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{_owner(cls_name, arg)} must be a finite float, got {value!r}.")
    return float(value)


def check_choice(cls_name: str, arg: str, value: Any, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`, else raise `ValueError` listing them."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{_owner(cls_name, arg)} must be one of {choices}, got {value!r}.")
    return value


def check_int_list(cls_name: str, arg: str, value: Any, minimum: int, length: int | None = None) -> list[int]:
    """Return `value` as a `list[int]` if it is a list/tuple of ints >= `minimum` (of `length` items if given)."""
    expected = f"a list of {length if length is not None else 'any number of'} ints >= {minimum}"
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        raise ValueError(f"{_owner(cls_name, arg)} must be {expected}, got {value!r}.")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or item < minimum:
            raise ValueError(f"{_owner(cls_name, arg)} must be {expected}, got {value!r}.")
    return list(value)


def resolve_activation(cls_name: str, activation: Any) -> str:
    """Return the canonical activation name, accepting the zoo spelling "leakyrelu" for "leaky_relu"."""
    if isinstance(activation, str):
        activation = _ACTIVATION_ALIASES.get(activation, activation)
    return check_choice(cls_name, "activation", activation, ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    """Instantiate the activation module called `name` (one of `ACTIVATIONS`, default arguments)."""
    return _ACTIVATION_MODULES[_ACTIVATION_ALIASES.get(name, name)]()


@torch.no_grad()
def init_conv_linear(modules: Iterable[nn.Module], init: str, bias_init: float) -> None:
    """Re-initialize every `Conv2d`/`Linear` weight in `modules` with `torch.nn.init.<init>_`.

    Biases are filled with the constant `bias_init`; the zoo generators use 0.01 ("small non-zero value", upstream
    `def_net.py`). Does nothing for `init="default"`. Randomness comes from the global torch RNG, so callers control
    it with `torch.manual_seed`.
    """
    if init == "default":
        return
    init_fn: Callable[[torch.Tensor], torch.Tensor] = getattr(nn.init, f"{init}_")
    for module in modules:
        if isinstance(module, nn.Conv2d | nn.Linear):
            init_fn(module.weight)
            if module.bias is not None:
                module.bias.fill_(bias_init)


# ---------------------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------------------


class ZooModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="sane_hf",
    tags=list(ZOO_MODEL_TAGS),
    repo_url=SANE_CODE_URL,
    paper_url=SANE_PAPER_URL,
    pipeline_tag="image-classification",
    model_card_template=ZOO_MODEL_CARD_TEMPLATE,
):
    """Base class of every model-zoo architecture.

    Subclasses inherit the Hub metadata declared here (`library_name="sane_hf"`, the tags `sane` and
    `sane-zoo-model`, the paper and code links and the card template) and add their own tags. `__init__` arguments
    must be JSON-serializable keyword arguments with defaults, because `PyTorchModelHubMixin` stores them in
    `config.json` and `from_pretrained` rebuilds the model from them.

    Differences from plain `PyTorchModelHubMixin`:
    - `from_pretrained` loads weights with `strict=True` by default (the mixin defaults to `strict=False`, which
      silently keeps random weights for missing keys; a detokenized SANE sample must fill every key).
    - `save_pretrained` adds `"zoo_architecture": zoo_name` to `config.json` so `load_zoo_model` can dispatch.
    - The model card states the architecture, parameter count and configuration.
    """

    # Registry name, set by `register_zoo_model`; `None` for classes that are not registered.
    zoo_name: ClassVar[str | None] = None
    num_classes: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass of a registered class may change the architecture, so it does not inherit the registry name
        # (otherwise its config.json would point `load_zoo_model` at the parent class).
        cls.zoo_name = None

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of parameters (buffers such as BatchNorm running statistics are not counted).

        Args:
            only_trainable (`bool`, *optional*, defaults to `False`):
                Count only parameters with `requires_grad=True`.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @property
    def zoo_config(self) -> dict[str, Any]:
        """The constructor arguments, as written to `config.json` (a JSON round-tripped copy)."""
        return json.loads(json.dumps(self._hub_mixin_config or {}))

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any) -> str | None:
        """Save `config.json`, `model.safetensors` and (if absent) `README.md` to `save_directory`.

        Same arguments as `PyTorchModelHubMixin.save_pretrained`. When `config` is not given, the constructor
        arguments are written together with `"zoo_architecture"` (the registry name).
        """
        if config is None and self.zoo_name is not None:
            config = {**self.zoo_config, ZOO_ARCHITECTURE_KEY: self.zoo_name}
        return super().save_pretrained(save_directory, config=config, **kwargs)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Push `config.json`, `model.safetensors` and `README.md` to `repo_id` in one commit.

        Same arguments as `PyTorchModelHubMixin.push_to_hub`; the only change is that the card's usage snippet
        names `repo_id` unless `model_card_kwargs` sets it.
        """
        model_card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs: Any) -> "ZooModel":
        # Only the default changes: see the class docstring. `from_pretrained(..., strict=False)` still works.
        return super()._from_pretrained(strict=strict, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """Render the card template; `model_card_kwargs` given to `save_pretrained` override the defaults."""
        template_values = {
            "architecture": type(self).__name__,
            "zoo_name": self.zoo_name,
            "num_parameters": f"{self.num_parameters():,}",
            "model_config": json.dumps(self.zoo_config, indent=2, sort_keys=True),
            **kwargs,
        }
        return super().generate_model_card(*args, **template_values)


ZooModelT = TypeVar("ZooModelT", bound=ZooModel)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

_ZOO_MODEL_REGISTRY: dict[str, type[ZooModel]] = {}


def register_zoo_model(name: str) -> Callable[[type[ZooModelT]], type[ZooModelT]]:
    """Class decorator that registers a `ZooModel` subclass under `name` and sets its `zoo_name`.

    Args:
        name (`str`):
            Registry name, e.g. `"cnn3"`. Registering a different class under a taken name raises `ValueError`.

    Example:

    ```python
    >>> from sane_hf.zoo_models import get_zoo_architecture
    >>> get_zoo_architecture("cnn3").zoo_name
    'cnn3'
    ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_zoo_model: `name` must be a non-empty string, got {name!r}.")

    def decorator(cls: type[ZooModelT]) -> type[ZooModelT]:
        if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
            raise TypeError(f"register_zoo_model({name!r}) expects a subclass of ZooModel, got {cls!r}.")
        existing = _ZOO_MODEL_REGISTRY.get(name)
        # Re-registering the "same" class (same module and qualified name) happens on `importlib.reload`.
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"Zoo architecture {name!r} is already registered to {existing.__module__}.{existing.__qualname__}."
            )
        if existing is not None and existing is not cls:
            logger.debug("Re-registering zoo architecture %r (module reloaded).", name)
        cls.zoo_name = name
        _ZOO_MODEL_REGISTRY[name] = cls
        return cls

    return decorator


def list_zoo_architectures() -> list[str]:
    """Sorted names of all registered zoo architectures."""
    return sorted(_ZOO_MODEL_REGISTRY)


def get_zoo_architecture(name: str) -> type[ZooModel]:
    """Return the class registered under `name`.

    Raises:
        `ValueError`: if `name` is not registered; the message lists the known names.
    """
    try:
        return _ZOO_MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown zoo architecture {name!r}. Known architectures: {', '.join(list_zoo_architectures())}."
        ) from None


def build_zoo_model(name: str, **kwargs: Any) -> ZooModel:
    """Instantiate the zoo architecture `name` with constructor arguments `kwargs`.

    Args:
        name (`str`):
            A name from `list_zoo_architectures()`.
        kwargs:
            Constructor arguments of that class, e.g. `num_classes=100`.

    Raises:
        `ValueError`: unknown `name` or an invalid argument value. `TypeError`: an argument the class does not take.

    Example:

    ```python
    >>> from sane_hf.zoo_models import build_zoo_model
    >>> build_zoo_model("cnn3").num_parameters()
    10853
    ```
    """
    cls = get_zoo_architecture(name)
    accepted = [param for param in cls._hub_mixin_init_parameters if param != "self"]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise TypeError(
            f"Zoo architecture {name!r} ({cls.__name__}) got unexpected arguments {unexpected}; it accepts {accepted}."
        )
    return cls(**kwargs)


# Upstream zoo `params.json`: `model::type` -> registry name (docs/zoo_dataset_format.md, upstream `def_net.py`).
UPSTREAM_MODEL_TYPES = {"CNN": "cnn_s", "CNN3": "cnn3", "Resnet18": "resnet18", "Resnet34": "resnet34", "MLP": "mlp"}


def zoo_params_to_kwargs(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Translate a zoo member's `params.json` (flat `"model::..."` keys) into a registry name and constructor args.

    Only the architecture keys are read (`model::type`, `model::channels_in`, `model::o_dim`, `model::nlin`,
    `model::dropout`, `model::init_type`, and for MLPs `model::i_dim`, `model::h_dim`, `model::use_bias`), with
    upstream's semantics: the CNNs always have 10 outputs (`o_dim` is ignored), and the ResNets ignore `nlin` and
    `dropout`. Images are assumed to have the upstream sizes (28x28 for "CNN", 32x32 for "CNN3").

    Args:
        params (`dict[str, Any]`):
            The parsed `params.json` of one trained model.

    Returns:
        `tuple[str, dict[str, Any]]`: `(name, kwargs)` for `build_zoo_model(name, **kwargs)`.

    Example:

    ```python
    >>> from sane_hf.zoo_models import build_zoo_model, zoo_params_to_kwargs
    >>> name, kwargs = zoo_params_to_kwargs(
    ...     {"model::type": "CNN3", "model::channels_in": 3, "model::nlin": "tanh", "model::dropout": 0.0,
    ...      "model::init_type": "kaiming_uniform"}
    ... )
    >>> name, kwargs
    ('cnn3', {'in_channels': 3, 'activation': 'tanh', 'dropout': 0.0, 'init': 'kaiming_uniform'})
    ```
    """
    model_type = params.get("model::type")
    if model_type not in UPSTREAM_MODEL_TYPES:
        raise ValueError(
            f"zoo_params_to_kwargs: `model::type` must be one of {sorted(UPSTREAM_MODEL_TYPES)}, got {model_type!r}."
        )
    name = UPSTREAM_MODEL_TYPES[model_type]

    def require(key: str) -> Any:
        # Upstream reads these keys unconditionally, so a params.json without them never built a model either.
        if f"model::{key}" not in params:
            raise ValueError(f"zoo_params_to_kwargs: `model::{key}` is missing, and {model_type!r} needs it.")
        return params[f"model::{key}"]

    kwargs: dict[str, Any]
    if name in ("cnn_s", "cnn3"):
        kwargs = {"in_channels": require("channels_in"), "activation": require("nlin"), "dropout": require("dropout")}
    elif name in ("resnet18", "resnet34"):
        kwargs = {"in_channels": require("channels_in"), "num_classes": require("o_dim")}
    else:
        if not require("use_bias"):
            raise ValueError("zoo_params_to_kwargs: MLPs without bias (`model::use_bias`=False) are not supported.")
        hidden = require("h_dim")
        kwargs = {
            "in_features": require("i_dim"),
            "hidden_sizes": list(hidden) if isinstance(hidden, list | tuple) else [hidden],
            "num_classes": require("o_dim"),
            "activation": require("nlin"),
            "dropout": require("dropout"),
        }
    # Upstream skips re-initialization when `init_type` is None (ResNets); that is our "default".
    kwargs["init"] = require("init_type") or "default"
    return name, kwargs


def load_zoo_model(
    pretrained_model_name_or_path: str | Path,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    **kwargs: Any,
) -> ZooModel:
    """Load a zoo model saved by `ZooModel.save_pretrained` without knowing its class.

    The class is looked up from the `"zoo_architecture"` entry of `config.json`, then its `from_pretrained` is
    called.

    Args:
        pretrained_model_name_or_path (`str` or `Path`):
            A local directory, or a Hub repo id.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit), ignored for local directories.
        subfolder (`str`, *optional*):
            The model's folder inside the directory or repo (e.g. `"model_000"` of a `sane-generate` repo, which
            holds several models); for repo ids only that folder is downloaded.
        kwargs:
            Passed on to `from_pretrained` (e.g. `map_location`, `strict`, `cache_dir`, `token`,
            `local_files_only`, or constructor arguments that override `config.json`).
    """
    path = Path(pretrained_model_name_or_path)
    if subfolder and not path.is_dir():
        # The mixin's `from_pretrained` has no `subfolder`: fetch that folder and load it as a local directory.
        hub_kwargs = {
            k: kwargs.pop(k) for k in ("cache_dir", "force_download", "token", "local_files_only") if k in kwargs
        }
        path = Path(
            snapshot_download(
                repo_id=str(pretrained_model_name_or_path),
                revision=revision,
                allow_patterns=[f"{subfolder}/*"],
                **hub_kwargs,
            )
        )
    if subfolder:
        path = path / subfolder
        pretrained_model_name_or_path = path
        if not path.is_dir():
            raise ValueError(f"load_zoo_model: no subfolder {subfolder!r} ({path} is not a directory).")
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise ValueError(f"load_zoo_model: no {CONFIG_NAME} in {path}.")
    else:
        hub_kwargs = {
            k: kwargs[k] for k in ("cache_dir", "force_download", "token", "local_files_only") if k in kwargs
        }
        config_file = Path(
            hf_hub_download(
                repo_id=str(pretrained_model_name_or_path), filename=CONFIG_NAME, revision=revision, **hub_kwargs
            )
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    name = config.get(ZOO_ARCHITECTURE_KEY)
    if name is None:
        raise ValueError(
            f"load_zoo_model: {config_file} has no {ZOO_ARCHITECTURE_KEY!r} entry (it was not saved by a registered "
            "ZooModel); load it with the concrete class, e.g. `CNN3.from_pretrained(...)`."
        )
    if path.is_dir():

        for weights in sorted(path.glob("*.safetensors")):
            safetensors_shapes(weights)  # a corrupt or truncated file: one line naming it, not a SafetensorError
    return get_zoo_architecture(name).from_pretrained(pretrained_model_name_or_path, revision=revision, **kwargs)
