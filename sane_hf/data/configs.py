"""Configurations of the data stage: `ZooConfig`, the options of `build_zoo` (`scripts/make_zoo.py`).

Each configuration validates itself in `__post_init__`: a bad value is one `ValueError` naming the field, the value
and what was expected.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..tasks import OPTIMIZERS
from ..zoo_models import ACTIVATIONS, INITS, get_zoo_architecture
from .zoo import DEFAULT_WEIGHT_THRESHOLD, ZOO_FORMATS, ZooFormat


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


@dataclass
class ConvertConfig:
    """Options of `sane-convert-zoo` (zoo -> tokenized Hub dataset).

    Args:
        zoo_dir (`str`): the zoo folder (or, with `zoo_format="models"`, a folder of model folders, or a
            comma-separated list of model folders / Hub model repo ids).
        output_dir (`str`): where the dataset folder is written.
        zoo_format (`str`, *optional*, defaults to `"auto"`): `auto`, `sane_hf`, `modelzoo` or `models`.

        token_size (`int`, *optional*, defaults to 0): token width `T`; 0 picks the widest row of the architecture
            (SANE §1.5, without the original's bias-only bug). The paper uses 289 for CNN3 and 288 for ResNet-18.
        tokenize_bn_stats (`bool`, *optional*, defaults to `True`): tokenize BatchNorm running statistics.
        ignore_bn (`bool`, *optional*, defaults to `False`): leave BatchNorm layers out of the tokens.
        normalization (`str`, *optional*, defaults to `"standardize"`): `standardize` (SANE §1.8) or `none`.
        canonicalize (`bool`, *optional*): map every model onto the reference model with git re-basin weight
            matching before normalization (the original's `map_to_canonical`): one permutation per model,
            found on its last converted epoch and applied to all its epochs. Removes the permutation symmetry from the
            stored tokens, so checkpoints with equal function look alike. By default (None) on, as the method does
            for every zoo, whenever the zoo's architecture is registered and its permutation spec can be derived
            (every `sane_hf` zoo architecture: MLP, CNNs, ResNet-18); off, with a log line saying why, for zoos of
            other architectures (e.g. transformers models), whose permutation symmetries are not modelled here.

        epochs (`list[str]`, *optional*, defaults to `["all"]`): epochs to convert: `all`, or numbers / ranges
            such as `21-25`.
        weight_threshold (`float`, *optional*, defaults to 1e6): drop checkpoints with any |w| above it, counted
            like NaN ones (docs/zoo_dataset_format.md#filtering); `inf` turns the check off.
        max_models (`int`, *optional*): keep this many models of the shuffled list (before splitting).
        split_fractions (`list[float]`, *optional*, defaults to `[0.7, 0.15, 0.15]`): train/val/test (or
            train/test) fractions of the models.
        seed (`int`, *optional*, defaults to 42): seed of the model shuffle (the original's `random.seed(42)`).

        shard_size_mb (`float`, *optional*, defaults to 100): maximum uncompressed token bytes per parquet shard
            (at least one checkpoint); the conversion holds up to two shards in memory.
        num_threads (`int`, *optional*, defaults to 1): `torch.set_num_threads` during the conversion (restored
            afterwards); 0 keeps torch's setting. The work is memory-bound copies, for which one thread was the
            faster choice on the project's shared 2-core machines (BENCHMARKS.md, "Zoo conversion and window
            loading"). Parquet shards are encoded and written by one more (Arrow) thread meanwhile.
        retain_freed_memory (`bool`, *optional*, defaults to `True`): on Linux with glibc, keep freed memory in the
            process for reuse (`sane_hf.utils.allocation`), so each batch's large token buffers stop faulting in
            fresh pages (BENCHMARKS.md, levers); the setting stays for the rest of the process.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `output_dir`.
        push_to_hub (`str`, *optional*): Hub dataset repo id to upload the folder to.
        hub_private (`bool`, *optional*, defaults to `False`): create the Hub repo as private (`private`: its
            deprecated name).
    """

    zoo_dir: str | None = field(
        default=None,
        metadata={
            "help": "Zoo folder; with --zoo_format models also a folder of model folders or a comma-separated list "
            "of model folders / Hub model repo ids."
        },
    )
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the tokenized dataset into."})
    zoo_format: Literal["auto", ZooFormat] = field(
        default="auto", metadata={"help": f"Layout of the zoo: auto or one of {list(ZOO_FORMATS)}."}
    )
    token_size: int = field(
        default=0, metadata={"help": "Token width T; 0 = the widest row of the architecture (SANE §1.5)."}
    )
    tokenize_bn_stats: bool = field(default=True, metadata={"help": "Tokenize BatchNorm running statistics."})
    ignore_bn: bool = field(default=False, metadata={"help": "Leave BatchNorm layers out of the tokens entirely."})
    normalization: Literal["standardize", "none"] = field(
        default="standardize",
        metadata={"help": "Per-layer normalization fitted on the train split: standardize (SANE §1.8) or none."},
    )
    canonicalize: bool | None = field(
        default=None,
        metadata={
            "help": "Map every model onto the reference model with weight matching before normalization "
            "(the original's map_to_canonical). Default: on when the zoo's architecture is registered (its permutation "
            "spec is known), off otherwise."
        },
    )
    epochs: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Epochs to convert: 'all', or numbers and ranges, e.g. --epochs 21-25 or --epochs 0 5 10."},
    )
    weight_threshold: float = field(
        default=DEFAULT_WEIGHT_THRESHOLD,
        metadata={
            "help": "Drop checkpoints with any |weight| above this, counted like NaN ones (SANE §2.2; the original "
            "used 100 for CNN zoos); inf turns the check off."
        },
    )
    max_models: int | None = field(
        default=None, metadata={"help": "Use only this many models of the shuffled list (before splitting)."}
    )
    split_fractions: list[float] = field(
        default_factory=lambda: [0.7, 0.15, 0.15],
        metadata={"help": "Fractions of models for train/val/test (3 values) or train/test (2 values); sum 1."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the model shuffle that defines the splits."})
    shard_size_mb: float = field(
        default=100.0, metadata={"help": "Maximum uncompressed token megabytes per parquet shard."}
    )
    num_threads: int = field(
        default=1, metadata={"help": "torch threads during the conversion (0: keep torch's setting)."}
    )
    retain_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On Linux (glibc), keep freed memory in the process for reuse, so each batch's token buffers do "
            "not fault in fresh pages; the process keeps its peak heap."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output_dir."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo id (org/name) to upload the dataset folder to."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset repo as private."})
    private: bool | None = field(default=None, metadata={"help": "Deprecated: use --hub_private."})

    def __post_init__(self):
        if self.private is not None:
            # One name for the flag in every script (pretrain and generate call it --hub_private).
            warnings.warn("`private` is deprecated; use `hub_private`.", FutureWarning, stacklevel=3)
            self.hub_private, self.private = bool(self.private), None
        if self.zoo_format != "auto" and self.zoo_format not in ZOO_FORMATS:
            raise ValueError(f"`zoo_format` must be 'auto' or one of {list(ZOO_FORMATS)}, got {self.zoo_format!r}.")
        if not isinstance(self.token_size, int) or isinstance(self.token_size, bool) or self.token_size < 0:
            raise ValueError(f"`token_size` must be an int >= 0 (0 = automatic), got {self.token_size!r}.")
        if self.normalization not in ("standardize", "none"):
            raise ValueError(f"`normalization` must be 'standardize' or 'none', got {self.normalization!r}.")
        if isinstance(self.epochs, str | int):
            self.epochs = [self.epochs]
        self.epoch_list()  # validates
        check_split_fractions(self.split_fractions)
        if not (isinstance(self.weight_threshold, int | float) and self.weight_threshold > 0):
            raise ValueError(f"`weight_threshold` must be a positive number, got {self.weight_threshold!r}.")
        if self.max_models is not None and (not isinstance(self.max_models, int) or self.max_models < 1):
            raise ValueError(f"`max_models` must be a positive int or None, got {self.max_models!r}.")
        if not (isinstance(self.shard_size_mb, int | float) and self.shard_size_mb > 0):
            raise ValueError(f"`shard_size_mb` must be a positive number, got {self.shard_size_mb!r}.")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise ValueError(f"`num_threads` must be an int >= 0, got {self.num_threads!r}.")

    def epoch_list(self) -> list[int] | None:
        """The requested epochs, or `None` for all."""
        return parse_epochs(self.epochs)


def parse_epochs(epochs: str | int | Iterable[str | int] | None) -> list[int] | None:
    """`"all"`/`None` -> `None`; numbers and inclusive ranges (`"21-25"`, `"0,5,10"`) -> a sorted list."""
    if epochs is None:
        return None
    items = [epochs] if isinstance(epochs, str | int) else list(epochs)
    parts: list[str | int] = []
    for item in items:
        if isinstance(item, str):
            parts.extend(p.strip() for p in item.split(",") if p.strip())
        else:
            parts.append(item)
    if [str(p).lower() for p in parts] == ["all"]:
        return None
    result: set[int] = set()
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool) and part >= 0:
            result.add(part)
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(part))
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise ValueError(
                f"`epochs` must be 'all' or non-negative epoch numbers / ranges like '21-25', got {epochs!r}."
            )
        low = int(match.group(1))
        result.update(range(low, int(match.group(2) or low) + 1))
    if not result:
        raise ValueError(f"`epochs` selects no epoch: {epochs!r}.")
    return sorted(result)


def check_split_fractions(fractions: Sequence[float]) -> list[float]:
    """Validate 2 (train/test) or 3 (train/val/test) non-negative fractions summing to 1."""
    fractions = list(fractions)
    if len(fractions) not in (2, 3) or any(not isinstance(f, int | float) or f < 0 for f in fractions):
        raise ValueError(f"`split_fractions` must be 2 or 3 non-negative numbers, got {fractions!r}.")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"`split_fractions` must sum to 1, got {fractions!r} (sum {sum(fractions)}).")
    return [float(f) for f in fractions]
