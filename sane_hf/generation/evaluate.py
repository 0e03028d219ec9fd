"""Evaluation of generated networks against baselines (docs/method.md#evaluation).

Every population gets the same treatment: zero-shot metrics ("epoch 0"), then fine-tuning for `E` epochs with the
same optimizer, learning rate, batch size and per-model batch order, with train/val/test loss and accuracy recorded
after every epoch. The populations:

- `generated`: the sampled networks;
- `scratch`: the same architecture from random initialization (the paper's baseline);
- `anchors`: the anchor models themselves, fine-tuned (the paper's "pretrained" row in its fine-tuning comparison);
- `noise_control`: the memorization control. For each generated model, its nearest anchor in weight space plus
  isotropic Gaussian noise scaled to exactly the same L2 distance. A generator that only copies its anchors and adds
  decoding error would match this control; beating it means the decoded deviations are better than random ones
  (docs/quality_study.md measures both, with the control given SUB's selection too).

Ensembles average the raw logits of a population's models on each split in its fixed order; the original shuffled
the train loader per model, which made its ensemble train accuracy meaningless (docs/method.md#evaluation).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import TASK_SPLITS, evaluate_split, load_task, make_optimizer, train_epoch
from ..utils.bootstrap import mean_interval
from ..utils.io import json_safe, read_json, verify_file_checksum, write_text_atomic
from ..utils.processes import Processes
from ..utils.threads import torch_threads
from ..zoo_models import build_zoo_model, load_zoo_model
from .bn_conditioning import condition_batchnorm
from .configs import EvaluateConfig, FinetuneConfig


logger = logging.getLogger(__name__)

SPLITS = TASK_SPLITS
METRICS = tuple(f"{split}_{metric}" for split in SPLITS for metric in ("loss", "acc"))
# Display order and labels of the populations in reports and plots.
POPULATION_LABELS = {
    "generated": "generated (SANE)",
    "anchors_reconstructed": "anchors, encoded + decoded",
    "anchors": "anchors (fine-tuned)",
    "noise_control": "anchor + noise at same distance",
    "noise_control_selected": "anchor + noise, best of candidates",
    "scratch": "from scratch",
}
EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
EVALUATION_PNG = "evaluation.png"


# -------------------------------------------------------------------------------------------------------------------
# Weight space: distances and the noise control
# -------------------------------------------------------------------------------------------------------------------


def classifier_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the last `nn.Linear` of `model` (its classifier), e.g. `["fc.weight", "fc.bias"]`."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return []
    return [f"{last}.{leaf}" for leaf, _ in model.get_submodule(last).named_parameters(recurse=False)]


def parameter_vector(model: nn.Module, exclude: Collection[str] = ()) -> torch.Tensor:
    """All parameters of `model` but `exclude`, flattened in registration order into one float64 vector."""
    return torch.cat([p.detach().double().flatten() for name, p in model.named_parameters() if name not in exclude])


def weight_distances(
    models: Sequence[nn.Module], anchors: Sequence[nn.Module], exclude: Collection[str] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distance in weight space from every model to its nearest anchor.

    Args:
        models (`Sequence[nn.Module]`): e.g. the generated networks.
        anchors (`Sequence[nn.Module]`): networks with the same parameter shapes.
        exclude (`Collection[str]`, *optional*): parameter names left out (e.g. a re-initialized classifier).

    Returns:
        `(distances, nearest)`: float64 `[len(models)]` and the index of the nearest anchor, long `[len(models)]`.
    """
    if not models or not anchors:
        raise ValueError("weight_distances needs at least one model and one anchor.")
    model_vectors = torch.stack([parameter_vector(m, exclude) for m in models])
    try:
        anchor_vectors = torch.stack([parameter_vector(a, exclude) for a in anchors])
    except RuntimeError:
        raise ValueError("The anchors do not all have the same parameter shapes.") from None
    if model_vectors.shape[1] != anchor_vectors.shape[1]:
        raise ValueError(
            f"The models have {model_vectors.shape[1]} parameters (excluding {sorted(exclude)}), the anchors "
            f"{anchor_vectors.shape[1]}; distances need the same architecture."
        )
    # Each distance from its own pair of vectors (no matrix-product shortcut, whose |x|^2 + |y|^2 - 2xy cancels for
    # nearby networks and whose rounding depends on how many models are measured at once: a process measuring its
    # share gets the distances one process gets).
    distances = torch.cdist(model_vectors, anchor_vectors, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.argmin(dim=1)
    return distances.gather(1, nearest[:, None])[:, 0], nearest


@torch.no_grad()
def add_isotropic_noise(
    model: nn.Module, distance: float, generator: torch.Generator | None = None, exclude: Collection[str] = ()
) -> nn.Module:
    """Move `model` (in place) by exactly `distance` in weight space along a uniformly random direction.

    The direction is an isotropic Gaussian vector over all parameters but `exclude`, normalized to unit length, so
    the L2 distance to the original weights equals `distance` (up to float32 rounding).
    """
    params = [p for name, p in model.named_parameters() if name not in exclude]
    noise = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
    norm = torch.sqrt(sum(n.square().sum() for n in noise))
    scale = float(distance) / float(norm) if norm > 0 else 0.0
    for p, n in zip(params, noise):
        p.add_((n * scale).to(p.dtype))
    return model


def noise_control_models(
    generated: Sequence[nn.Module],
    anchors: Sequence[nn.Module],
    generator: torch.Generator | None = None,
    exclude: Collection[str] = (),
) -> tuple[list[nn.Module], torch.Tensor, torch.Tensor]:
    """The memorization control: for every generated model, its nearest anchor plus noise at the same distance.

    Returns:
        `(controls, distances, nearest)`: the control networks (copies; the anchors are untouched), the generated
        models' distances to their nearest anchor (float64) and the nearest anchors' indices.
    """
    distances, nearest = weight_distances(generated, anchors, exclude)
    controls = []
    for distance, anchor in zip(distances.tolist(), nearest.tolist()):
        control = copy.deepcopy(anchors[anchor])
        controls.append(add_isotropic_noise(control, distance, generator=generator, exclude=exclude))
    return controls, distances, nearest


# -------------------------------------------------------------------------------------------------------------------
# Fine-tuning and ensembles
# -------------------------------------------------------------------------------------------------------------------


def _metrics(model: nn.Module, task: Any) -> dict[str, float]:
    row = {}
    for split in SPLITS:
        result = evaluate_split(model, *task.split(split))
        row[f"{split}_loss"] = result["loss"]
        row[f"{split}_acc"] = result["acc"]
    return row


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i : i + batch_size]).float() for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was_training)


def finetune(
    model: nn.Module,
    task: Any,
    epochs: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    ensemble_splits: Sequence[str] = ("train", "test"),
) -> tuple[list[dict[str, float]], dict[int, dict[str, torch.Tensor]]]:
    """Fine-tune `model` in place, recording metrics at epoch 0 (zero-shot) and after every epoch.

    Args:
        model (`nn.Module`): the network (its weights change).
        task (`TaskData`): the task (`sane_hf.tasks.load_task`).
        epochs (`int`): fine-tuning epochs (0: zero-shot only).
        optimizer, lr, weight_decay, batch_size: the schedule (`sane_hf.tasks.make_optimizer`, constant lr).
        seed (`int`, *optional*, defaults to 0): seed of the batch order and of dropout; give model `r` of every
            population the same seed so the populations see identical batch sequences.
        ensemble_splits (`Sequence[str]`): splits whose logits are kept at epoch 0 and at the last epoch.

    Returns:
        `(history, logits)`: `history[e]` holds `epoch` and the `METRICS` after `e` epochs; `logits[e][split]` the
        logits `[N, C]` on `split` in its fixed order, for `e` in `{0, epochs}`.
    """
    generator = torch.Generator().manual_seed(seed)
    history, logits = [], {}

    def record(epoch: int) -> None:
        history.append({"epoch": epoch, **_metrics(model, task)})
        if epoch in (0, epochs):
            logits[epoch] = {split: _logits(model, task.split(split).images) for split in ensemble_splits}

    # Dropout draws from the global RNG: fork it so the caller's stream is untouched and runs are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        record(0)
        if epochs > 0:
            opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=weight_decay)
            for epoch in range(1, epochs + 1):
                train_epoch(model, task.train, opt, batch_size=batch_size, generator=generator)
                record(epoch)
    model.eval()
    return history, logits


def ensemble_metrics(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and cross-entropy of the logit-averaged ensemble (every entry `[N, C]` in the same sample order)."""
    mean_logits = torch.stack(list(logits)).mean(dim=0)
    return {
        "acc": float((mean_logits.argmax(dim=1) == labels).double().mean()),
        "loss": float(F.cross_entropy(mean_logits, labels)),
    }


@dataclass
class PopulationResult:
    """Fine-tuning curves of one population of networks.

    Args:
        name (`str`): population name (`generated`, `scratch`, `anchors`, `noise_control`, ...).
        histories (`list[list[dict]]`): per model, per epoch `{epoch, train_loss, train_acc, ...}`.
        ensemble (`dict`): `{"epoch_0": {"train_acc", "test_acc", ...}, "epoch_<E>": {...}}`.
        seconds (`float`): wall time of the population's evaluation.
        distances (`list[float]`, *optional*): weight-space distance of each model to its nearest anchor.
        extra (`dict`): anything else worth reporting (e.g. sampler wall time).
    """

    name: str
    histories: list[list[dict[str, float]]]
    ensemble: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    distances: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_models(self) -> int:
        return len(self.histories)

    @property
    def epochs(self) -> list[int]:
        return [row["epoch"] for row in self.histories[0]] if self.histories else []

    def curve(self, metric: str = "test_acc") -> tuple[list[float], list[float]]:
        """Mean and (sample) standard deviation over models of `metric` at every epoch."""
        values = torch.tensor([[row[metric] for row in history] for history in self.histories], dtype=torch.float64)
        mean = values.mean(dim=0)
        std = values.std(dim=0) if values.shape[0] > 1 else torch.zeros_like(mean)
        return mean.tolist(), std.tolist()

    def to_dict(self) -> dict[str, Any]:
        curves = {}
        for metric in METRICS:
            mean, std = self.curve(metric)
            curves[metric] = {"mean": mean, "std": std}
        result = {
            "num_models": self.num_models,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "curves": curves,
            "ensemble": self.ensemble,
            "per_model": self.histories,
            **self.extra,
        }
        if self.distances is not None:
            values = torch.tensor(self.distances, dtype=torch.float64)
            result["distance_to_nearest_anchor"] = {
                "mean": float(values.mean()),
                "std": float(values.std()) if len(self.distances) > 1 else 0.0,
                "values": list(self.distances),
            }
        return result


def evaluate_population(
    name: str,
    models: Sequence[nn.Module],
    task: Any,
    config: FinetuneConfig,
    distances: Sequence[float] | None = None,
    copy_models: bool = True,
) -> PopulationResult:
    """Zero-shot metrics, fine-tuning curves and ensembles of one population.

    Model `r` is fine-tuned with seed `config.eval_seed * 1_000_003 + r`, the same in every population, so
    populations are compared on identical batch sequences. With `config.finetune_lr_grid`, the population is
    fine-tuned once per learning rate and the rate with the best mean *validation* accuracy after the last epoch is
    reported (every population gets its own best rate; the test split never chooses anything).

    Args:
        name (`str`): the population's name.
        models (`Sequence[nn.Module]`): the networks (copied first unless `copy_models=False`).
        task (`TaskData`): the task.
        config (`FinetuneConfig`): the schedule.
        distances (`Sequence[float]`, *optional*): weight-space distances to report with the population.
        copy_models (`bool`, *optional*, defaults to `True`): fine-tune copies, leaving `models` untouched (forced
            when several learning rates are tried).
    """
    if not models:
        raise ValueError(f"Population {name!r} has no models.")
    learning_rates = list(config.finetune_lr_grid or [config.finetune_lr])
    start = time.perf_counter()
    best, search = None, {}
    for lr in learning_rates:
        result = _evaluate_at_lr(name, models, task, config, lr, copy_models or len(learning_rates) > 1)
        val_mean, _ = result.curve("val_acc")
        test_mean, _ = result.curve("test_acc")
        search[f"{lr:g}"] = {"final_val_acc": val_mean[-1], "test_acc": test_mean}
        if best is None or val_mean[-1] > best.curve("val_acc")[0][-1]:
            best = result
    best.seconds = time.perf_counter() - start
    best.distances = None if distances is None else [float(d) for d in distances]
    if len(learning_rates) > 1:
        best.extra["lr_search"] = search
    mean, std = best.curve("test_acc")
    logger.info(
        "%s (%d models, lr %g, %.1f s): test acc zero-shot %.4f ± %.4f, after %d epochs %.4f ± %.4f.",
        name,
        len(models),
        best.extra["finetune_lr"],
        best.seconds,
        mean[0],
        std[0],
        config.finetune_epochs,
        mean[-1],
        std[-1],
    )
    return best


def _evaluate_at_lr(
    name: str, models: Sequence[nn.Module], task: Any, config: FinetuneConfig, lr: float, copy_models: bool
) -> PopulationResult:
    # Under a launch each process fine-tunes its share of the models (model r keeps its seed) and every process
    # gets every history and logit, the same as one process's.
    processes = Processes.current()
    own = []
    for index in processes.share(len(models)):
        model = copy.deepcopy(models[index]) if copy_models else models[index]
        own.append(
            finetune(
                model,
                task,
                config.finetune_epochs,
                optimizer=config.finetune_optimizer,
                lr=lr,
                weight_decay=config.finetune_weight_decay,
                batch_size=config.finetune_batch_size,
                seed=config.eval_seed * 1_000_003 + index,
            )
        )
    gathered = processes.gather(own)
    histories, logits = [history for history, _ in gathered], [model_logits for _, model_logits in gathered]
    ensemble = {}
    if config.ensemble:
        for epoch in sorted({0, config.finetune_epochs}):
            ensemble[f"epoch_{epoch}"] = {}
            for split in logits[0][epoch]:
                labels = task.split(split).labels
                metrics = ensemble_metrics([m[epoch][split] for m in logits], labels)
                ensemble[f"epoch_{epoch}"].update({f"{split}_acc": metrics["acc"], f"{split}_loss": metrics["loss"]})
    return PopulationResult(name=name, histories=histories, ensemble=ensemble, extra={"finetune_lr": lr})


def scratch_models(
    architecture: str, model_kwargs: Sequence[Mapping[str, Any]], num_models: int, seed: int = 0
) -> list[nn.Module]:
    """`num_models` freshly initialized zoo networks (model `r` uses `model_kwargs[r % len]` and seed `seed + r`)."""

    models = []
    for index in range(num_models):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            models.append(build_zoo_model(architecture, **dict(model_kwargs[index % len(model_kwargs)])).eval())
    return models


# -------------------------------------------------------------------------------------------------------------------
# Comparison and reports
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """The comparison of populations on one task.

    Args:
        populations (`dict[str, PopulationResult]`): by name, in display order.
        task (`dict`): the task description (`TaskData.info()`).
        config (`dict`): the fine-tuning configuration.
        extra (`dict`): anything else (generation settings, wall times).
    """

    populations: dict[str, PopulationResult]
    task: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "config": self.config,
            **self.extra,
            "populations": {name: result.to_dict() for name, result in self.populations.items()},
        }

    def to_markdown(self, metric: str = "test_acc") -> str:
        """A Markdown report: `metric` per fine-tuning epoch (mean ± std over models), ensembles, distances."""
        lines = [f"# Evaluation of generated models on `{self.task.get('name', 'task')}`", ""]
        epochs = next(iter(self.populations.values())).epochs if self.populations else []
        lines.append(
            f"`{metric}` (mean ± std over models) at fine-tuning epoch 0 (zero-shot) to {epochs[-1] if epochs else 0}"
            f"; optimizer {self.config.get('finetune_optimizer')}, "
            + (
                f"lr chosen per population on validation accuracy from {self.config['finetune_lr_grid']}"
                if self.config.get("finetune_lr_grid")
                else f"lr {self.config.get('finetune_lr')}"
            )
            + ", batch size "
            f"{self.config.get('finetune_batch_size')}, same batch order for model r of every population."
        )
        lines.append("")
        header = [
            "population",
            "models",
            *[f"epoch {e}" for e in epochs],
            "epoch 0: 95% interval of the mean",
            "ensemble ep 0",
            f"ensemble ep {epochs[-1] if epochs else 0}",
            "lr",
            "distance to nearest anchor",
            "seconds",
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for name, result in self.populations.items():
            mean, std = result.curve(metric)
            cells = [POPULATION_LABELS.get(name, name), str(result.num_models)]
            cells += [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std)]
            low, high = mean_interval([history[0][metric] for history in result.histories])
            cells.append(f"[{low:.4f}, {high:.4f}]")
            for epoch in (0, epochs[-1] if epochs else 0):
                value = result.ensemble.get(f"epoch_{epoch}", {}).get(metric)
                cells.append("" if value is None else f"{value:.4f}")
            cells.append(f"{result.extra['finetune_lr']:g}" if "finetune_lr" in result.extra else "")
            if result.distances:
                d = torch.tensor(result.distances, dtype=torch.float64)
                cells.append(f"{float(d.mean()):.3f} ± {float(d.std()) if len(result.distances) > 1 else 0.0:.3f}")
            else:
                cells.append("")
            seconds = result.seconds + float(result.extra.get("generation_seconds", 0.0))
            cells.append(f"{seconds:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "Seconds: wall time of the population's evaluation (fine-tuning + metrics), plus its generation time "
            "(sampling, decoding, scoring) for generated populations. Distances are L2 in weight space over all "
            "parameters (a re-initialized classifier excluded). Intervals: percentile bootstrap over the "
            "population's models (1000 resamples)."
        )
        for key, value in self.extra.items():
            lines.append("")
            lines.append(f"**{key}**: `{json.dumps(value, default=str)}`")
        lines.append("")
        return "\n".join(lines)


def plot_accuracy_curves(report: EvaluationReport, path: str | os.PathLike, metric: str = "test_acc") -> Path:
    """Plot `metric` vs fine-tuning epoch, mean ± std per population, into a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as error:
        raise ImportError("Plotting the evaluation needs matplotlib: `pip install matplotlib`.") from error
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, result in report.populations.items():
        mean, std = result.curve(metric)
        epochs = result.epochs
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        (line,) = axis.plot(
            epochs, mean, marker="o", label=f"{POPULATION_LABELS.get(name, name)} (n={result.num_models})"
        )
        axis.fill_between(epochs, low, high, alpha=0.2, color=line.get_color())
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("fine-tuning epoch")
    axis.set_ylabel(metric.replace("_", " "))
    axis.set_title(f"{report.task.get('name', 'task')}: {metric} vs fine-tuning epoch")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    os.replace(tmp, path)
    return path


def write_evaluation_report(
    report: EvaluationReport, output_dir: str | os.PathLike, plot: bool = True
) -> dict[str, Path]:
    """Write `evaluation.json`, `evaluation.md` and (if `plot`) `evaluation.png` into `output_dir`, atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / EVALUATION_JSON, "markdown": output_dir / EVALUATION_MD}
    # NaN stays NaN (a diverged model's loss); objects JSON has no type for are written as their text.
    record = json_safe(report.to_dict(), strict=False)
    write_text_atomic(paths["json"], json.dumps(record, indent=1, default=str) + "\n")
    write_text_atomic(paths["markdown"], report.to_markdown())
    if plot:
        paths["plot"] = plot_accuracy_curves(report, output_dir / EVALUATION_PNG)
    return paths


def compare_with_baselines(
    generated: Sequence[nn.Module],
    anchors: Sequence[nn.Module] | None,
    task: Any,
    config: FinetuneConfig,
    architecture: str,
    model_kwargs: Sequence[Mapping[str, Any]],
    condition: Callable[[nn.Module], nn.Module] | None = None,
    exclude: Collection[str] = (),
    extra_populations: Mapping[str, Sequence[nn.Module]] | None = None,
    generation_seconds: float = 0.0,
) -> EvaluationReport:
    """Evaluate generated networks next to scratch, fine-tuned anchors and the noise control (docs/method.md#evaluation).

    Args:
        generated (`Sequence[nn.Module]`): the generated (already BN-conditioned) networks.
        anchors (`Sequence[nn.Module]`, *optional*): the anchor networks (real zoo weights, same target
            architecture); without them the `anchors` and `noise_control` populations are skipped.
        task (`TaskData`): the task.
        config (`FinetuneConfig`): schedule, number of scratch models, whether to run the noise control/ensembles.
        architecture (`str`), model_kwargs (`Sequence[dict]`): how scratch models are built (model `r` uses
            `model_kwargs[r % len]`), unless `config.scratch_architecture="anchors"`: then like anchor `r`.
        condition (`Callable`, *optional*): BN conditioning applied to scratch and noise-control networks, as it was
            to the generated ones.
        exclude (`Collection[str]`, *optional*): parameters left out of distances and noise (re-initialized
            classifier).
        extra_populations (`Mapping[str, Sequence[nn.Module]]`, *optional*): more populations to evaluate (e.g.
            reconstructed anchors).
        generation_seconds (`float`, *optional*): wall time of the generation, reported with `generated`.
    """
    condition = condition or (lambda model: model)
    populations: dict[str, PopulationResult] = {}
    distances = None
    if anchors:
        distances, _ = weight_distances(generated, anchors, exclude)
    populations["generated"] = evaluate_population(
        "generated", generated, task, config, distances=None if distances is None else distances.tolist()
    )
    populations["generated"].extra["generation_seconds"] = round(generation_seconds, 3)
    for name, models in (extra_populations or {}).items():
        populations[name] = evaluate_population(name, models, task, config)
    if anchors:
        populations["anchors"] = evaluate_population("anchors", anchors, task, config)
        if config.noise_control:
            generator = torch.Generator().manual_seed(config.eval_seed + 7)
            controls, control_distances, _ = noise_control_models(generated, anchors, generator, exclude)
            controls = [condition(control) for control in controls]
            # The control's realized distances (float32 weights) are what the report shows.
            realized, _ = weight_distances(controls, anchors, exclude)
            populations["noise_control"] = evaluate_population(
                "noise_control", controls, task, config, distances=realized.tolist()
            )
            populations["noise_control"].extra["target_distances"] = control_distances.tolist()
    num_scratch = config.num_scratch if config.num_scratch is not None else len(generated)
    if num_scratch > 0:
        if config.scratch_architecture == "anchors" and anchors:
            model_kwargs = [anchor.zoo_config for anchor in anchors]
        scratch = [condition(m) for m in scratch_models(architecture, model_kwargs, num_scratch, config.eval_seed)]
        populations["scratch"] = evaluate_population("scratch", scratch, task, config)
        populations["scratch"].extra["model_kwargs"] = [m.zoo_config for m in scratch if hasattr(m, "zoo_config")]
    finetune_config = {
        key: getattr(config, key)
        for key in (
            "finetune_epochs",
            "finetune_optimizer",
            "finetune_lr",
            "finetune_lr_grid",
            "finetune_weight_decay",
            "finetune_batch_size",
            "eval_seed",
            "num_scratch",
            "scratch_architecture",
            "noise_control",
            "ensemble",
        )
    }
    return EvaluationReport(populations=populations, task=task.info(), config=finetune_config)


# -------------------------------------------------------------------------------------------------------------------
# Evaluating saved models (scripts/evaluate.py)
# -------------------------------------------------------------------------------------------------------------------


def _model_folders(folder: Path, prefix: str) -> list[Path]:
    if (folder / "config.json").is_file():
        return [folder]
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix) and (p / "config.json").is_file()
    )


def evaluate_models(config: EvaluateConfig) -> EvaluationReport:
    """Fine-tune and compare saved generated models (`sane-evaluate`): loads `<models>/model_*/` (and anchors).

    The task defaults to the one recorded in `<models>/generation.json` by `sane-generate`. The generated models are
    evaluated as saved (their BatchNorm statistics were conditioned at generation time); scratch and noise-control
    networks are conditioned here with the same settings.

    Returns:
        `EvaluationReport`, also written to `output_dir` (default `models`) as JSON, Markdown and PNG.
    """
    with torch_threads(config.num_threads):
        return _evaluate_saved_models(config)


def _evaluate_saved_models(config: EvaluateConfig) -> EvaluationReport:

    models_dir = Path(config.models)
    if not models_dir.is_dir():
        raise FileNotFoundError(f"{models_dir}: not a folder of generated models.")
    generation_file = models_dir / "generation.json"
    generation = read_json(generation_file, "the record sane-generate writes", missing=None) or {}
    if generation:
        for name, recorded in (generation.get("checksums") or {}).items():
            if (models_dir / name).is_file():  # a missing file is named by the loader
                verify_file_checksum(models_dir / name, recorded, str(generation_file))
    folders = _model_folders(models_dir, "model_")
    if not folders:
        raise FileNotFoundError(f"{models_dir}: no model_*/ folders with a config.json (written by sane-generate).")
    generated = [load_zoo_model(folder).eval() for folder in folders]
    anchors_dir = Path(config.anchors) if config.anchors else models_dir / "anchors"
    anchors = None
    if anchors_dir.is_dir():
        anchors = [load_zoo_model(folder).eval() for folder in _model_folders(anchors_dir, "anchor_")] or None
    elif config.anchors:
        raise FileNotFoundError(f"{anchors_dir}: no such anchors folder.")
    task_name = config.task or generation.get("task", {}).get("name")
    if not task_name:
        raise ValueError("No task given and none recorded in generation.json; pass --task (e.g. digits).")
    task_seed = config.task_seed if config.task_seed is not None else generation.get("task", {}).get("seed", 0)
    task = load_task(task_name, seed=task_seed)
    bn_images = task.split(config.bn_split).images

    def condition(model: nn.Module) -> nn.Module:
        if not config.bn_condition:
            return model
        generator = torch.Generator().manual_seed(config.eval_seed)
        return condition_batchnorm(model, bn_images, config.bn_iterations, config.bn_batch_size, generator)

    architecture = read_json(folders[0] / "config.json", "a generated model's config").get("zoo_architecture")
    model_kwargs = [m.zoo_config for m in generated]
    exclude = classifier_parameter_names(generated[0]) if generation.get("config", {}).get("reset_classifier") else ()
    report = compare_with_baselines(
        generated, anchors, task, config, architecture, model_kwargs, condition=condition, exclude=exclude
    )
    report.extra["models"] = str(models_dir)
    if generation:
        report.extra["generation"] = {
            k: generation.get(k) for k in ("sampler", "sane_model", "timings") if k in generation
        }
    output_dir = Path(config.output_dir) if config.output_dir else models_dir
    processes = Processes.current()
    if processes.is_main:  # under a launch every process holds the whole report; one writes it
        write_evaluation_report(report, output_dir, plot=config.plot)
    processes.barrier()
    return report
