"""Configurations of the data stage: `ZooConfig`, the options of `build_zoo` (`scripts/make_zoo.py`).

Each configuration validates itself in `__post_init__`: a bad value is one `ValueError` naming the field, the value
and what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..tasks import OPTIMIZERS
from ..zoo_models import ACTIVATIONS, INITS, get_zoo_architecture


# Model arguments that are generating factors, each drawn from the `ZooConfig` grid named here.
FACTOR_GRIDS = {"activation": "activations", "init": "inits", "dropout": "dropouts"}


# Upper bounds of a zoo, so that a typo (`epochs: 1000000000000`) is an error instead of a build that fills the disk.
# Model folders are named with 4 digits (`model_id_for`), so beyond 10,000 models their sorted order would no longer
# be the index order; the paper's zoos train for at most 60 epochs, one checkpoint per epoch and model.
MAX_MODELS = 10_000
MAX_EPOCHS = 10_000


@dataclass
class ZooConfig:
    """Options of `build_zoo` (`scripts/make_zoo.py`). The defaults build the digits CNN zoo.

    Model `index` draws each generating factor uniformly from its grid with `numpy.random.default_rng([seed, index])`
    (in the order optimizer, learning rate, weight decay, init, activation, dropout, then a model seed), so a model's
    factors and seed depend only on `seed` and its index, not on `num_models` or on the other models.

    Args:
        output_dir (`str`, *optional*, defaults to `"runs/zoo"`):
            Zoo folder; rerunning into it resumes (finished models are skipped).

        > Task and architecture

        task (`str`, *optional*, defaults to `"digits"`):
            `"digits"` (scikit-learn, offline) or a Hub dataset id / local dataset folder (see `load_task`).
        task_seed (`int`, *optional*, defaults to 0):
            Seed of the task's train/val/test split; fixed across the zoo.
        architecture (`str`, *optional*, defaults to `"cnn_s"`):
            Zoo architecture (a name from `sane_hf.zoo_models.list_zoo_architectures()`).
        model_kwargs (`dict`, *optional*, defaults to `{"input_size": 8, "padding": "auto"}`):
            Constructor arguments of the architecture (a JSON string on the command line). `in_channels`,
            `input_size`, `in_features` and `num_classes` are filled in from the task; `activation`, `init` and
            `dropout` come from the grids below.

        > Training

        num_models (`int`, *optional*, defaults to 120):
            Number of models, at most `MAX_MODELS` (10,000).
        epochs (`int`, *optional*, defaults to 15):
            Training epochs per model, at most `MAX_EPOCHS` (10,000); checkpoints are written for epochs 0
            (initialization) to `epochs`.
        batch_size (`int`, *optional*, defaults to 32):
            Mini-batch size.
        seed (`int`, *optional*, defaults to 0):
            Zoo seed; model `i`'s factors and seed are drawn from `(seed, i)`.
        momentum (`float`, *optional*, defaults to 0.9):
            SGD momentum.

        > Generating factors (each model draws one value per grid). The defaults were chosen on digits pilots so
        that properties are predictable from the weights (s(W) test-accuracy R² 0.90 vs 0.65-0.73 for grids with
        Adam, sigmoid or five initializations; `scripts/configs/zoo_digits_cnn.yaml` has the numbers): SGD from
        PyTorch's default initialization trains gradually at every learning rate, so checkpoints span the whole
        learning curve (final test accuracy: median ~0.5, p90 ~0.95).

        optimizers (`list[str]`, *optional*, defaults to `["sgd"]`):
            From `"sgd"`, `"adam"`, `"adamw"`.
        learning_rates (`list[float]`, *optional*, defaults to `[1e-3, 3e-3, 1e-2, 3e-2]`):
            Learning rates.
        weight_decays (`list[float]`, *optional*, defaults to `[0.0, 1e-4, 1e-3]`):
            Weight decays (L2 penalty for SGD/Adam, decoupled for AdamW).
        inits (`list[str]`, *optional*, defaults to `["default"]`, PyTorch's own initialization):
            Weight initializations (`sane_hf.zoo_models.INITS`).
        activations (`list[str]`, *optional*, defaults to `["relu", "tanh", "gelu"]`):
            Activations (`sane_hf.zoo_models.ACTIVATIONS`).
        dropouts (`list[float]`, *optional*, defaults to `[0.0, 0.1, 0.2]`):
            Dropout probabilities in [0, 1).

        > Execution

        batched (`bool`, *optional*, defaults to `True`):
            Train models that share an architecture configuration and optimizer together as one computation
            (Sequential architectures only; others are trained one at a time). Changes results in the last bits
            compared to `batched=False`, so it is part of the configuration.
        max_group_size (`int`, *optional*, defaults to 64):
            Largest number of models trained together.
        num_threads (`int`, *optional*, defaults to 1):
            `torch.set_num_threads` during the build (restored afterwards); 0 keeps torch's setting. One thread was
            the fastest for these tiny networks on the 2-core machines.
    """

    output_dir: str = field(default="runs/zoo", metadata={"help": "Zoo folder (rerunning resumes)."})
    task: str = field(
        default="digits", metadata={"help": "'digits' (offline) or a Hub dataset id / local dataset folder."}
    )
    task_seed: int = field(default=0, metadata={"help": "Seed of the task's train/val/test split."})
    architecture: str = field(default="cnn_s", metadata={"help": "Zoo architecture (registry name)."})
    model_kwargs: dict | str | None = field(
        default_factory=lambda: {"input_size": 8, "padding": "auto"},
        metadata={
            "help": "Architecture constructor arguments as a JSON object; in_channels/input_size/in_features/"
            "num_classes come from the task, activation/init/dropout from the grids."
        },
    )
    num_models: int = field(default=120, metadata={"help": "Number of models in the zoo (at most 10,000)."})
    epochs: int = field(
        default=15, metadata={"help": "Training epochs (at most 10,000); checkpoints for epochs 0..epochs."}
    )
    batch_size: int = field(default=32, metadata={"help": "Mini-batch size."})
    seed: int = field(default=0, metadata={"help": "Zoo seed: model i's factors and seed come from (seed, i)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    optimizers: list[str] = field(
        default_factory=lambda: ["sgd"], metadata={"help": f"Optimizer grid, from {list(OPTIMIZERS)}."}
    )
    learning_rates: list[float] = field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2], metadata={"help": "Learning-rate grid."}
    )
    weight_decays: list[float] = field(
        default_factory=lambda: [0.0, 1e-4, 1e-3], metadata={"help": "Weight-decay grid."}
    )
    inits: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={"help": f"Initialization grid, from {list(INITS)}."},
    )
    activations: list[str] = field(
        default_factory=lambda: ["relu", "tanh", "gelu"],
        metadata={"help": f"Activation grid, from {list(ACTIVATIONS)}."},
    )
    dropouts: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2], metadata={"help": "Dropout grid."})
    batched: bool = field(
        default=True, metadata={"help": "Train models sharing an architecture config and optimizer together."}
    )
    max_group_size: int = field(default=64, metadata={"help": "Largest number of models trained together."})
    num_threads: int = field(default=1, metadata={"help": "torch threads during the build (0: keep torch's)."})

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.model_kwargs, str):
            try:
                self.model_kwargs = json.loads(self.model_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{name}: `model_kwargs` must be a JSON object, got {self.model_kwargs!r} ({error})."
                ) from None
        if self.model_kwargs is None:
            self.model_kwargs = {}
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"{name}: `model_kwargs` must be a mapping, got {self.model_kwargs!r}.")
        self.model_kwargs = dict(self.model_kwargs)
        for key in FACTOR_GRIDS:
            if key in self.model_kwargs:
                raise ValueError(
                    f"{name}: `model_kwargs` must not set {key!r}; it is a generating factor, set the grid "
                    f"`{FACTOR_GRIDS[key]}` instead (e.g. a single value)."
                )
        for attr, maximum in (("num_models", MAX_MODELS), ("epochs", MAX_EPOCHS)):
            value = getattr(self, attr)
            if isinstance(value, int) and value > maximum:
                raise ValueError(f"{name}: `{attr}` must be <= {maximum:,}, got {value:,}.")
        for attr, minimum in (
            ("num_models", 1),
            ("epochs", 0),
            ("batch_size", 1),
            ("max_group_size", 1),
            ("num_threads", 0),
            ("seed", 0),
            ("task_seed", 0),
        ):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}: `{attr}` must be an int >= {minimum}, got {value!r}.")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"{name}: `task` must be a non-empty string, got {self.task!r}.")
        get_zoo_architecture(self.architecture)  # raises ValueError listing the known names
        if not isinstance(self.batched, bool):
            raise ValueError(f"{name}: `batched` must be a bool, got {self.batched!r}.")
        self.momentum = _as_float(name, "momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        self.optimizers = _as_choice_list(name, "optimizers", self.optimizers, OPTIMIZERS)
        self.inits = _as_choice_list(name, "inits", self.inits, INITS)
        self.activations = _as_choice_list(name, "activations", self.activations, ACTIVATIONS)
        self.learning_rates = _as_float_list(name, "learning_rates", self.learning_rates, 0.0, math.inf, low_open=True)
        self.weight_decays = _as_float_list(name, "weight_decays", self.weight_decays, 0.0, math.inf)
        self.dropouts = _as_float_list(name, "dropouts", self.dropouts, 0.0, 1.0, high_inclusive=False)

    def to_dict(self) -> dict[str, Any]:
        """`asdict(self)` after a JSON round trip (what `zoo_config.json` holds, before the format keys)."""
        return json.loads(json.dumps(asdict(self)))


def _as_float(
    owner: str, attr: str, value: Any, low: float, high: float, *, low_open: bool = False, high_inclusive: bool = True
) -> float:
    # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted and converted.
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    upper_ok = number <= high if high_inclusive else number < high
    lower_ok = number > low if low_open else number >= low
    if not (math.isfinite(number) and lower_ok and upper_ok):
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{owner}: `{attr}` must be a float in {interval}, got {value!r}.")
    return number


def _as_float_list(
    owner: str, attr: str, values: Any, low: float, high: float, *, low_open: bool = False, high_inclusive: bool = True
) -> list[float]:
    if isinstance(values, str | int | float):
        values = [values]
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{owner}: `{attr}` must be a non-empty list of floats, got {values!r}.")
    return [_as_float(owner, attr, v, low, high, low_open=low_open, high_inclusive=high_inclusive) for v in values]


def _as_choice_list(owner: str, attr: str, values: Any, choices: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{owner}: `{attr}` must be a non-empty list from {list(choices)}, got {values!r}.")
    for value in values:
        if value not in choices:
            raise ValueError(f"{owner}: `{attr}` must only hold values from {list(choices)}, got {value!r}.")
    return list(values)
