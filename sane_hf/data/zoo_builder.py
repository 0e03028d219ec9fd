"""Build a model zoo: a population of small networks trained with varied hyper-parameters, checkpointed every epoch.

SANE learns from zoos of this kind (docs/method.md, docs/zoo_dataset_format.md): many models of one architecture, trained on one task with
"generating factors" drawn from grids (optimizer, learning rate, weight decay, initialization, activation, dropout;
the model-zoo paper's recipe), with a checkpoint and metrics per epoch. The zoo's design decides what is learnable
from it (in an early prototype's zoo, test accuracy was predictable from weights while epoch and gap were not), so
the defaults spread
test accuracy widely on purpose: small SGD learning rates, saturating activations, high dropout, SGD next to
Adam.

On-disk format (`ZOO_FORMAT`, version `ZOO_FORMAT_VERSION`; zoo readers rely on it):

```
<output_dir>/
  zoo_config.json                  asdict(ZooConfig) + {"format", "format_version", "task": {task info}}
  models/<model_id>/               model_id = f"model_{index:04d}"
    params.json                    factors, seed and the full `build_zoo_model` kwargs of the model
    metrics.jsonl                  one line per epoch 0..epochs (0 = the initialization, before any training)
    checkpoints/epoch_<e:04d>.safetensors   state_dict of epoch e (metadata: epoch, model_id)
    DONE                           written last; a folder without it is unfinished
```

Every file is written atomically (temporary file in the same folder, then `os.replace`), so a reader never sees
half a file. Metrics of epoch `e` are measured after the epoch in eval mode on the full train, val and test splits
(`train_acc` is not a running average over the epoch's mini-batches), `ggap = train_acc - test_acc`, and a
non-finite loss (a diverged model) is written as `null`. Checkpoint headers are canonical, so equal weights give
byte-identical files.

Seeding: model `i`'s factors and seed come from `numpy.random.default_rng([seed, i])` only (not from `num_models` or
the other models); its initialization, batch order and dropout masks come from that seed.

Training (in `sane_hf.tasks`, beside the other training of zoo members): models whose architecture is a plain
`nn.Sequential` stack (`cnn_s`, `cnn3`, `mlp`) and that share an architecture configuration and optimizer are trained
together as one batched computation (`sane_hf.tasks.train_batched`: grouped convolutions, batched matmuls, a batched
optimizer with the `torch.optim` update rules), because per-operation overhead dominates a 2,464-parameter CNN.
Without dropout, batched and one-at-a-time training agree to ~1e-7 after two epochs. Other architectures (ResNets
with BatchNorm) are trained one at a time with `sane_hf.tasks.train_epoch`. This module plans the members, groups
them, and writes their files.

Resuming: a rerun with the same configuration skips models with `DONE`. Groups are a function of the configuration,
so an unfinished model is retrained from scratch with its whole group (deterministic CPU ops), and only the
unfinished members are written: the result is bit-identical to an uninterrupted build. A different configuration in
an existing folder is an error naming the differing fields.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from ..tasks import (
    TASK_SPLITS,
    TaskData,
    TaskSplit,
    evaluate_split,
    load_task,
    make_optimizer,
    supports_batched_training,
    train_batched,
    train_epoch,
)
from ..utils.checks import config_differences
from ..utils.io import (
    bytes_checksum,
    json_safe,
    output_lock,
    read_json,
    remove_temporary_files,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ..utils.threads import torch_threads
from ..zoo_models import CNN3, MLP, CNNSmall, ZooModel, build_zoo_model, get_zoo_architecture
from .configs import FACTOR_GRIDS, ZooConfig
from .zoo_format import (
    CHECKPOINTS_DIR,
    DONE_CHECKSUMS_KEY,
    DONE_NAME,
    METRICS_NAME,
    MODELS_DIR,
    PARAMS_NAME,
    ZOO_CONFIG_NAME,
    ZOO_FORMAT,
    ZOO_FORMAT_VERSION,
    checkpoint_name,
    model_id_for,
    read_done,
)


logger = logging.getLogger(__name__)

# ZooConfig fields that do not change what is trained, so a rerun may change them.
RUNTIME_FIELDS = ("output_dir", "num_threads")
# Constructor arguments the builder fills in from the task; the factor arguments come from the grids.
_TASK_KWARGS = ("in_channels", "input_size", "in_features", "num_classes")
# Offsets of the per-model random streams from the model seed (params.json "seed"): initialization, batch order,
# dropout masks of the batched trainer.
_INIT_STREAM, _ORDER_STREAM, _DROPOUT_STREAM = 0, 1, 2


# ---------------------------------------------------------------------------------------------------------------
# Per-model plan: factors, seed and constructor arguments
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """What zoo model `index` is: its generating factors, seed and full `build_zoo_model` arguments.

    `activation`, `init` and `dropout` are `None` when the architecture has no such argument (e.g. ResNets have no
    `activation`).
    """

    index: int
    seed: int
    optimizer: str
    lr: float
    weight_decay: float
    init: str | None
    activation: str | None
    dropout: float | None
    model_kwargs: dict[str, Any]

    @property
    def model_id(self) -> str:
        return model_id_for(self.index)


def _accepted_kwargs(architecture: str) -> list[str]:
    cls = get_zoo_architecture(architecture)
    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]


def resolve_model_kwargs(config: ZooConfig, task: TaskData) -> dict[str, Any]:
    """The constructor arguments shared by every model of the zoo: `config.model_kwargs` plus the task's shape.

    Raises:
        `ValueError`: an argument the architecture does not take, a value that contradicts the task, or a grid with
        several values for a factor the architecture does not have.
    """
    accepted = _accepted_kwargs(config.architecture)
    kwargs = dict(config.model_kwargs)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"ZooConfig.model_kwargs: architecture {config.architecture!r} does not take {unknown}; it accepts "
            f"{accepted}."
        )
    channels, height, width = task.input_shape
    from_task: dict[str, Any] = {"in_channels": channels, "num_classes": task.num_classes}
    from_task["in_features"] = channels * height * width
    if "input_size" in accepted:
        if height != width:
            raise ValueError(
                f"ZooConfig: architecture {config.architecture!r} needs square images, task {task.name!r} has "
                f"{height}x{width}."
            )
        from_task["input_size"] = height
    for key in _TASK_KWARGS:
        if key not in accepted:
            continue
        if key in kwargs and kwargs[key] != from_task[key]:
            raise ValueError(
                f"ZooConfig.model_kwargs: {key}={kwargs[key]!r} contradicts task {task.name!r} ({key}={from_task[key]})."
            )
        kwargs[key] = from_task[key]
    for key, grid in FACTOR_GRIDS.items():
        values = getattr(config, grid)
        if key not in accepted and len(set(values)) > 1:
            raise ValueError(
                f"ZooConfig.{grid}: architecture {config.architecture!r} has no `{key}` argument, so the grid must "
                f"hold a single value; got {values}."
            )
    return kwargs


def plan_model(config: ZooConfig, index: int, base_kwargs: dict[str, Any]) -> ModelPlan:
    """Draw the generating factors and the seed of model `index` from `numpy.random.default_rng([seed, index])`.

    Args:
        config (`ZooConfig`):
            The zoo configuration (grids and seed).
        index (`int`):
            Model index, `0 <= index < num_models`.
        base_kwargs (`dict`):
            Shared constructor arguments from `resolve_model_kwargs`.
    """
    rng = np.random.default_rng([config.seed, index])

    def pick(grid: list) -> Any:
        return grid[int(rng.integers(len(grid)))]

    optimizer = pick(config.optimizers)
    lr = pick(config.learning_rates)
    weight_decay = pick(config.weight_decays)
    factors = {"init": pick(config.inits), "activation": pick(config.activations), "dropout": pick(config.dropouts)}
    # < 2**31, so the seed survives float64 and 32-bit consumers of params.json exactly.
    seed = int(rng.integers(2**31 - 2))
    accepted = _accepted_kwargs(config.architecture)
    factors = {key: (value if key in accepted else None) for key, value in factors.items()}
    kwargs = {**base_kwargs, **{key: value for key, value in factors.items() if value is not None}}
    return ModelPlan(
        index=index,
        seed=seed,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        model_kwargs=kwargs,
        **factors,
    )


def _build_model(config: ZooConfig, plan: ModelPlan) -> ZooModel:
    # Initialization draws from the global RNG (`init_conv_linear`), seeded per model right before building.
    torch.manual_seed(plan.seed + _INIT_STREAM)
    return build_zoo_model(config.architecture, **plan.model_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """`safetensors.torch.save(tensors, metadata)` with a canonical header, so equal checkpoints are equal files.

    safetensors keeps the header in a hash map whose key order changes from call to call; the header JSON is
    re-written with sorted keys (same length, or padded with spaces as the format allows). The data offsets do not
    depend on the header order, and the file is read back by any safetensors reader.
    """
    data = save_safetensors({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    canonical = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(canonical) > length:  # never seen; keep safetensors' own bytes rather than produce a broken file
        return data
    return data[:8] + canonical.ljust(length, b" ") + data[8 + length :]


def _metrics_line(epoch: int, train: dict, val: dict, test: dict) -> dict[str, Any]:
    # Strict JSON has no NaN/Infinity; a diverged model's loss is written as null (`json_safe`).
    line = {
        "epoch": epoch,
        "train_loss": json_safe(train["loss"]),
        "train_acc": train["acc"],
        "val_loss": json_safe(val["loss"]),
        "val_acc": val["acc"],
        "test_loss": json_safe(test["loss"]),
        "test_acc": test["acc"],
        "ggap": train["acc"] - test["acc"],
    }
    return line


class _ModelWriter:
    """Writes one model folder: params.json first, then a checkpoint and metrics.jsonl per epoch, DONE last."""

    def __init__(self, folder: Path, model_id: str) -> None:
        self.folder = folder
        self.model_id = model_id
        self.lines: list[dict[str, Any]] = []
        self.checksums: dict[str, dict[str, Any]] = {}  # checkpoint file name -> size and sha256, recorded in DONE

    def start(self, params: dict[str, Any]) -> None:
        if self.folder.exists():
            # Unfinished (no DONE): redo from scratch, so nothing of an interrupted run is mixed in.
            shutil.rmtree(self.folder)
        (self.folder / CHECKPOINTS_DIR).mkdir(parents=True)
        write_json_atomic(self.folder / PARAMS_NAME, params)

    def write_epoch(self, epoch: int, state_dict: dict[str, torch.Tensor], line: dict[str, Any]) -> None:
        metadata = {"epoch": str(epoch), "model_id": self.model_id, "format": "pt"}
        path = self.folder / CHECKPOINTS_DIR / checkpoint_name(epoch)
        data = safetensors_bytes(state_dict, metadata)
        write_bytes_atomic(path, data)
        self.checksums[path.name] = bytes_checksum(data)
        self.lines.append(line)
        write_text_atomic(self.folder / METRICS_NAME, "".join(json.dumps(item) + "\n" for item in self.lines))

    def finish(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.folder / DONE_NAME, {**summary, DONE_CHECKSUMS_KEY: self.checksums})


def _params_record(config: ZooConfig, plan: ModelPlan, model: ZooModel) -> dict[str, Any]:
    return {
        "model_id": plan.model_id,
        "index": plan.index,
        "architecture": config.architecture,
        # The model's own record of its constructor arguments: complete, including defaults such as bias_init.
        "model_kwargs": model.zoo_config,
        "task": config.task,
        "seed": plan.seed,
        "lr": plan.lr,
        "weight_decay": plan.weight_decay,
        "optimizer": plan.optimizer,
        "init": plan.init,
        "activation": plan.activation,
        "dropout": plan.dropout,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "momentum": config.momentum if plan.optimizer == "sgd" else None,
        "task_seed": config.task_seed,
        "num_parameters": model.num_parameters(),
    }


def _done_record(config: ZooConfig, plan: ModelPlan, lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": ZOO_FORMAT,
        "format_version": ZOO_FORMAT_VERSION,
        "model_id": plan.model_id,
        "index": plan.index,
        "epochs": config.epochs,
        "num_checkpoints": len(lines),
        "final_metrics": lines[-1],
    }


# ---------------------------------------------------------------------------------------------------------------
# Which zoo architectures the batched trainer runs
# ---------------------------------------------------------------------------------------------------------------


def _sequential_spec(model: nn.Module) -> tuple[nn.Sequential, bool] | None:
    """`(layers, flatten_input)` if `model` is a Sequential stack the batched trainer can run, else `None`."""
    if isinstance(model, CNNSmall | CNN3):
        layers, flatten_input = model.module_list, False
    elif isinstance(model, MLP):
        layers, flatten_input = model.module_list, True
    else:
        return None
    return (layers, flatten_input) if supports_batched_training(model, layers) else None


# ---------------------------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Group:
    plans: list[ModelPlan]
    batched: bool


def _group_models(config: ZooConfig, plans: list[ModelPlan], batchable: bool) -> list[_Group]:
    """Deterministic groups (a function of the configuration only), so a resumed build retrains the same groups."""
    if not (config.batched and batchable):
        return [_Group([plan], batched=False) for plan in plans]
    by_key: dict[str, list[ModelPlan]] = {}
    for plan in plans:
        shared = {k: v for k, v in plan.model_kwargs.items() if k not in ("init", "dropout")}
        key = json.dumps([plan.optimizer, shared], sort_keys=True)
        by_key.setdefault(key, []).append(plan)
    groups = []
    for members in by_key.values():
        for start in range(0, len(members), config.max_group_size):
            groups.append(_Group(members[start : start + config.max_group_size], batched=True))
    groups.sort(key=lambda group: group.plans[0].index)
    return groups


def _zoo_record(config: ZooConfig, task: TaskData) -> dict[str, Any]:
    record = config.to_dict()
    record.update({"format": ZOO_FORMAT, "format_version": ZOO_FORMAT_VERSION, "task": task.info()})
    return record


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    comparable = {k: v for k, v in record.items() if k not in RUNTIME_FIELDS}
    task = comparable.get("task")
    if isinstance(task, dict):
        comparable["task"] = task.get("name")
        for key in ("num_classes", "input_shape", "split_sizes"):
            comparable[f"task.{key}"] = task.get(key)
    return comparable


def _check_or_write_zoo_config(output_dir: Path, record: dict[str, Any]) -> None:
    path = output_dir / ZOO_CONFIG_NAME
    if not path.exists():
        models_dir = output_dir / MODELS_DIR
        if models_dir.exists() and any(models_dir.iterdir()):
            raise ValueError(
                f"{output_dir} holds a {MODELS_DIR}/ folder but no {ZOO_CONFIG_NAME}; it is not a zoo written by "
                "build_zoo. Choose an empty or new output_dir."
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        return
    stored = read_json(path, f"the {ZOO_CONFIG_NAME} build_zoo writes, to resume this zoo")
    if stored.get("format") != ZOO_FORMAT or stored.get("format_version") != ZOO_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format {stored.get('format')!r} version {stored.get('format_version')!r}; this builder "
            f"writes {ZOO_FORMAT!r} version {ZOO_FORMAT_VERSION}. Use a new output_dir."
        )
    old, new = _comparable(stored), _comparable(record)
    differing, details = config_differences(old, new)
    if differing:
        raise ValueError(
            f"{output_dir} already holds a zoo built with a different configuration (differing fields: "
            f"{', '.join(differing)}). {details}. Use another output_dir, or the stored configuration to resume."
        )
    runtime_changes = [key for key in RUNTIME_FIELDS if key != "output_dir" and stored.get(key) != record.get(key)]
    if runtime_changes:
        logger.warning("Resuming %s with changed runtime options %s.", output_dir, runtime_changes)


class _ZooRun:
    """State of one `build_zoo` call: the task, the plans and the progress bar."""

    def __init__(self, config: ZooConfig, task: TaskData, models_dir: Path, progress: tqdm) -> None:
        self.config = config
        self.task = task
        self.models_dir = models_dir
        self.progress = progress

    def _evaluate_all(self, evaluate_split: Callable[[TaskSplit], Any]) -> tuple[Any, Any, Any]:
        """`evaluate_split` applied to the train, val and test splits."""
        return tuple(evaluate_split(self.task.split(split)) for split in TASK_SPLITS)

    def train_single(self, plan: ModelPlan) -> None:
        """Train one model with `torch.optim` and `train_epoch` (architectures the batched trainer cannot run)."""
        config = self.config
        model = _build_model(config, plan)
        writer = _ModelWriter(self.models_dir / plan.model_id, plan.model_id)
        writer.start(_params_record(config, plan, model))
        optimizer = make_optimizer(plan.optimizer, model.parameters(), plan.lr, plan.weight_decay, config.momentum)
        order = torch.Generator().manual_seed(plan.seed + _ORDER_STREAM)
        # Dropout of the one-at-a-time path draws from the global RNG, seeded by `_build_model`.
        for epoch in range(config.epochs + 1):
            if epoch > 0:
                train_epoch(model, self.task.train, optimizer, config.batch_size, generator=order)
            train, val, test = self._evaluate_all(lambda split: evaluate_split(model, *split))
            writer.write_epoch(epoch, model.state_dict(), _metrics_line(epoch, train, val, test))
            self.progress.set_postfix(model=plan.model_id, epoch=epoch, test_acc=f"{test['acc']:.3f}")
        writer.finish(_done_record(config, plan, writer.lines))

    def train_group(self, plans: list[ModelPlan], write: list[bool]) -> None:
        """Train `plans` together; only members with `write[m]` get files (the others are finished already)."""
        config = self.config
        models = [_build_model(config, plan) for plan in plans]
        # The group's layer stack; build it with dropout if any member has dropout (cnn_s/mlp only add Dropout
        # modules for p > 0, which does not change their parameters).
        max_dropout = max(plan.dropout or 0.0 for plan in plans)
        template = models[[plan.dropout or 0.0 for plan in plans].index(max_dropout)]
        layers, flatten_input = _sequential_spec(template)
        writers = [_ModelWriter(self.models_dir / plan.model_id, plan.model_id) for plan in plans]
        for plan, model, writer, do_write in zip(plans, models, writers, write):
            if do_write:
                writer.start(_params_record(config, plan, model))
        epochs = train_batched(
            models,
            layers,
            flatten_input,
            self.task,
            optimizer=plans[0].optimizer,
            lrs=[plan.lr for plan in plans],
            weight_decays=[plan.weight_decay for plan in plans],
            momentum=config.momentum,
            dropouts=[plan.dropout or 0.0 for plan in plans],
            epochs=config.epochs,
            batch_size=config.batch_size,
            order_generators=[torch.Generator().manual_seed(plan.seed + _ORDER_STREAM) for plan in plans],
            dropout_generators=[torch.Generator().manual_seed(plan.seed + _DROPOUT_STREAM) for plan in plans],
        )
        for epoch, train, val, test in epochs:
            for m, (model, writer) in enumerate(zip(models, writers)):
                if write[m]:
                    writer.write_epoch(epoch, model.state_dict(), _metrics_line(epoch, train[m], val[m], test[m]))
            median = float(np.median([t["acc"] for t in test]))
            self.progress.set_postfix(
                group=f"{plans[0].model_id}+{len(plans) - 1}", epoch=epoch, test_acc=f"{median:.3f}"
            )
        for plan, writer, do_write in zip(plans, writers, write):
            if do_write:
                writer.finish(_done_record(config, plan, writer.lines))


def _is_done(folder: Path) -> bool:
    return read_done(folder) is not None


def summarize_zoo(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Summary of a (possibly unfinished) zoo folder: model counts, size on disk and the final test accuracies.

    Returns:
        `dict`: `num_models` (from `zoo_config.json`), `num_done`, `size_bytes` (all files) and `final_test_acc`
        with `min`, `p10`, `median`, `p90`, `max` over finished models (`None` if none is finished).
    """
    output_dir = Path(output_dir)
    config = read_json(output_dir / ZOO_CONFIG_NAME, f"the {ZOO_CONFIG_NAME} build_zoo writes")
    accuracies = []
    for index in range(config["num_models"]):
        done = read_done(output_dir / MODELS_DIR / model_id_for(index))
        if done is not None:
            accuracies.append(done["final_metrics"]["test_acc"])
    size = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file())
    spread = None
    if accuracies:
        values = np.asarray(accuracies)
        spread = {
            "min": float(values.min()),
            "p10": float(np.percentile(values, 10)),
            "median": float(np.median(values)),
            "p90": float(np.percentile(values, 90)),
            "max": float(values.max()),
        }
    return {
        "output_dir": str(output_dir),
        "num_models": config["num_models"],
        "num_done": len(accuracies),
        "size_bytes": size,
        "final_test_acc": spread,
    }


def build_zoo(config: ZooConfig, task: TaskData | None = None) -> dict[str, Any]:
    """Train the zoo described by `config` into `config.output_dir`, resuming an interrupted build.

    Args:
        config (`ZooConfig`):
            What to train and where.
        task (`TaskData`, *optional*):
            The task, if already loaded; by default `load_task(config.task, seed=config.task_seed)`. Its name must
            be `config.task`.

    Returns:
        `dict`: `summarize_zoo(output_dir)` plus `trained` (models trained by this call), `skipped` (already
        finished) and `seconds`.

    Raises:
        `ValueError`: `output_dir` holds a zoo with a different configuration (the message names the differing
        fields), or the configuration does not fit the task or the architecture.
        `FileExistsError`: another process is building into `output_dir` (its lock file names it).

    Example:

    ```python
    >>> from sane_hf.data.zoo_builder import ZooConfig, build_zoo
    >>> summary = build_zoo(ZooConfig(output_dir="runs/tiny_zoo", num_models=3, epochs=2))  # doctest: +SKIP
    ```
    """
    start_time = time.perf_counter()
    if task is None:
        task = load_task(config.task, seed=config.task_seed)
    elif task.name != config.task:
        raise ValueError(f"build_zoo: `task` is {task.name!r} but config.task is {config.task!r}.")
    output_dir = Path(config.output_dir)
    with output_lock(output_dir):  # a second build into the same folder would train the same members twice
        return _build_zoo(config, task, output_dir, start_time)


def _build_zoo(config: ZooConfig, task: TaskData, output_dir: Path, start_time: float) -> dict[str, Any]:
    base_kwargs = resolve_model_kwargs(config, task)
    _check_or_write_zoo_config(output_dir, _zoo_record(config, task))
    # A build killed while writing zoo_config.json leaves its temporary file; unfinished model folders are redone.
    remove_temporary_files(output_dir)
    models_dir = output_dir / MODELS_DIR
    models_dir.mkdir(exist_ok=True)

    plans = [plan_model(config, index, base_kwargs) for index in range(config.num_models)]
    trained = skipped = 0
    with torch_threads(config.num_threads):
        # fork_rng: the per-model seeding must not leak into the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            probe_plan = plans[0]
            batchable = _sequential_spec(_build_model(config, probe_plan)) is not None
            if config.batched and not batchable:
                logger.info(
                    "%s is not a Sequential zoo architecture; training one model at a time.", config.architecture
                )
            groups = _group_models(config, plans, batchable)
            done = {plan.index: _is_done(models_dir / plan.model_id) for plan in plans}
            skipped = sum(done.values())
            logger.info(
                "Building zoo %s: %d models (%d finished), %d epochs, %d training groups",
                output_dir,
                config.num_models,
                skipped,
                config.epochs,
                len(groups),
            )
            with tqdm(total=config.num_models, initial=skipped, desc="zoo", unit="model") as progress:
                run = _ZooRun(config, task, models_dir, progress)
                for group in groups:
                    write = [not done[plan.index] for plan in group.plans]
                    if not any(write):
                        continue
                    group_start = time.perf_counter()
                    if group.batched:
                        run.train_group(group.plans, write)
                    else:
                        run.train_single(group.plans[0])
                    trained += sum(write)
                    progress.update(sum(write))
                    logger.debug(
                        "Trained %s (+%d) in %.1f s",
                        group.plans[0].model_id,
                        len(group.plans) - 1,
                        time.perf_counter() - group_start,
                    )
    summary = summarize_zoo(output_dir)
    summary.update({"trained": trained, "skipped": skipped, "seconds": round(time.perf_counter() - start_time, 1)})
    logger.info("Zoo %s: %s", output_dir, summary)
    return summary
