"""The whole SANE pipeline on the embedded default task (scikit-learn digits), as `scripts/quickstart.py` runs it.

Stages, each a library call with its own config, outputs under `output_dir`:

1. `zoo/`       `build_zoo`: a population of small CNNs trained on digits, checkpointed every epoch.
2. `zoo_ds/`    `convert_zoo`: tokenized, canonicalized (docs/method.md#canonicalization) and normalized Hub-layout dataset.
3. `sane/`      `pretrain`: SANE pretrained on windows of the zoo's tokens (SANE §4).
4. `predict/`   `predict_properties`: ridge probes on SANE embeddings next to the W and s(W) baselines (SANE §5).
5. `generated/` `generate`: subsampled models (SANE_SUB, SANE §6) with zero-shot and fine-tuning evaluation
   against training from scratch, the fine-tuned anchors and the anchors-plus-noise memorization control.
6. `REPORT.md`  the tables and plots of stages 4-5, the zoo's accuracy spread and the wall time of every stage.

Presets size the run: `default` is the README's main job (its recipe and measurements: docs/quality_study.md), `smoke`
is a one-minute version the tests run. `vit` and `vit_smoke` run the same pipeline on a zoo of tiny vision
transformers (docs/transformer_zoo.md). The same pipeline as separate commands: `scripts/configs/*_digits_cnn.yaml`.
A rerun into the same `output_dir` skips every stage whose output is complete and whose options are unchanged
(`quickstart_state.json` records them); the zoo and the pretraining also resume from partial work.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .constants import VALIDATION_SPLIT, split_scores
from .data.configs import ConvertConfig, ZooConfig
from .data.convert import convert_zoo
from .data.zoo_builder import build_zoo
from .generation import GenerateConfig, generate
from .probing.configs import PredictConfig
from .probing.predict import predict_properties
from .probing.report import best_record
from .training.checkpoints import read_trainer_state
from .training.configs import PretrainConfig
from .training.loop import pretrain
from .utils.bootstrap import mean_interval
from .utils.io import read_json, write_json_atomic, write_text_atomic
from .utils.threads import torch_threads


logger = logging.getLogger(__name__)

STATE_FILE = "quickstart_state.json"
REPORT_FILE = "REPORT.md"
STAGES = ("zoo", "convert", "pretrain", "predict", "generate")
STAGE_DIRS = {"zoo": "zoo", "convert": "zoo_ds", "pretrain": "sane", "predict": "predict", "generate": "generated"}

# Options of each stage's config (ZooConfig, ConvertConfig, PretrainConfig, PredictConfig, GenerateConfig) that
# differ from the library defaults. Paths are filled in by `stage_configs`.
# The default zoo is `ZooConfig`'s defaults, which are scripts/configs/zoo_digits_cnn.yaml (tests keep them equal).
_ZOO_DEFAULT: dict[str, Any] = {}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "zoo": _ZOO_DEFAULT,
        "convert": {"token_size": 64, "canonicalize": True},
        # The recipe of the quality study (docs/quality_study.md, `benchmarks/study_pretrain.py`): a latent as wide
        # as a token (no per-token bottleneck), lr 1e-2 with gradient clipping (lr 1e-2 diverged without it at 40
        # epochs, 2e-2 diverged with it) and batches of 32 (twice as many steps per epoch as 64).
        "pretrain": {
            "d_model": 64,
            "n_heads": 4,
            "n_layers": 2,
            "latent_dim": 64,
            "window_size": 128,
            "epochs": 40,
            "batch_size": 32,
            "lr": 1e-2,
            "max_grad_norm": 1.0,
            "save_steps": 400,
            "logging_steps": 40,
        },
        "predict": {
            "properties": ["test_acc", "epoch", "ggap", "activation", "optimizer"],
            "poolings": ["mean", "mean+layers", "stats"],
            "gradient_boosting": False,
            "finetune_epochs": 10,
            "finetune_pooling": "stats",
            "embed_batch_size": 128,
        },
        "generate": {
            "num_anchors": 20,
            "sampler": "subsample",
            "n": 10,
            "bandwidth": 0.3,
            "num_candidates": 200,
            "score_split": "val",
            "finetune_epochs": 5,
            "finetune_optimizer": "adam",
            "finetune_lr": 1e-3,
        },
    },
    "smoke": {
        "zoo": {**_ZOO_DEFAULT, "num_models": 12, "epochs": 3},
        "convert": {"token_size": 64, "canonicalize": True},
        "pretrain": {
            "d_model": 32,
            "n_heads": 2,
            "n_layers": 1,
            "latent_dim": 8,
            "window_size": 32,
            "epochs": 1,
            "batch_size": 16,
            "save_steps": 1000,
            "logging_steps": 5,
        },
        "predict": {
            "properties": ["test_acc", "epoch", "activation"],
            "poolings": ["mean"],
            "gradient_boosting": False,
            "finetune_epochs": 1,
            "plots": True,
        },
        "generate": {
            "num_anchors": 3,
            "sampler": "subsample",
            "n": 2,
            "bandwidth": 0.01,
            "num_candidates": 4,
            "score_split": "val",
            "finetune_epochs": 1,
        },
    },
}

# The transformer zoo (docs/architecture.md#transformer-zoos): tiny ViTs on digits, scripts/configs/zoo_digits_vit.yaml
# (a test keeps them equal). Conversion canonicalizes with the head-aware weight matching and pretraining permutes
# heads, within-head dimensions and feed-forward units (docs/method.md#transformer-symmetries). The ViT has no
# BatchNorm, so generation needs no BN conditioning. Otherwise the same recipe as `default`; its measured run is in
# docs/transformer_zoo.md.
_ZOO_VIT: dict[str, Any] = {
    "architecture": "vit",
    "model_kwargs": {"patch_size": 4, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32},
    "num_models": 48,
    "epochs": 10,
    "optimizers": ["sgd", "adam"],
    "learning_rates": [0.001, 0.003, 0.01],
    "weight_decays": [0.0, 0.0001, 0.001],
    "activations": ["relu", "tanh", "gelu"],
    "dropouts": [0.0, 0.1],
}
PRESETS["vit"] = {
    **PRESETS["default"],
    "zoo": _ZOO_VIT,
    "convert": {"token_size": 32, "canonicalize": True},
    "generate": {**PRESETS["default"]["generate"], "bn_condition": False},
}
PRESETS["vit_smoke"] = {
    **PRESETS["smoke"],
    "zoo": {**_ZOO_VIT, "num_models": 10, "epochs": 3},
    "convert": {"token_size": 32, "canonicalize": True},
    "generate": {**PRESETS["smoke"]["generate"], "bn_condition": False},
}


@dataclass
class QuickstartConfig:
    """Options of the quickstart pipeline.

    Args:
        output_dir (`str`, *optional*, defaults to `"outputs/quickstart"`): where every stage writes (see the module
            docstring) and where `REPORT.md` goes.
        preset (`str`, *optional*, defaults to `"default"`): `default` (the README's run, docs/quality_study.md)
            or `smoke` (about a minute; what the tests run).
        seed (`int`, *optional*, defaults to 0): seed of the zoo, the pretraining, the probes and the sampler.
        num_threads (`int`, *optional*, defaults to 1): torch CPU threads; on the project's shared 2-core machines
            one thread was fastest for these small models (BENCHMARKS.md).
        zoo_models (`int`, *optional*): override the preset's number of zoo models.
        zoo_epochs (`int`, *optional*): override the preset's zoo training epochs.
        pretrain_epochs (`int`, *optional*): override the preset's SANE pretraining epochs.
        rerun (`bool`, *optional*, defaults to `False`): run every stage again even when its output is complete.
    """

    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Output folder of all stages."})
    preset: str = field(
        default="default", metadata={"help": f"Run size: one of {list(PRESETS)} (smoke: ~1 minute, for tests)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the zoo, the pretraining, the probes and the sampler."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads (1 was fastest on 2 shared cores)."})
    zoo_models: int | None = field(default=None, metadata={"help": "Override the preset's number of zoo models."})
    zoo_epochs: int | None = field(default=None, metadata={"help": "Override the preset's zoo training epochs."})
    pretrain_epochs: int | None = field(default=None, metadata={"help": "Override the preset's pretraining epochs."})
    rerun: bool = field(default=False, metadata={"help": "Run every stage again even if its output is complete."})

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {list(PRESETS)}, got {self.preset!r}.")
        for name in ("zoo_models", "zoo_epochs", "pretrain_epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
        if not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ValueError(f"`num_threads` must be an int >= 1, got {self.num_threads!r}.")


def stage_configs(config: QuickstartConfig, preset: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The config object of every stage for `config`: `{"zoo": ZooConfig, "convert": ConvertConfig, ...}`.

    `preset` replaces `PRESETS[config.preset]` (the quality study, `benchmarks/study_pretrain.py`, varies it).
    """

    preset = PRESETS[config.preset] if preset is None else preset
    root = Path(config.output_dir)
    dirs = {stage: str(root / name) for stage, name in STAGE_DIRS.items()}
    zoo = dict(preset["zoo"])
    if config.zoo_models is not None:
        zoo["num_models"] = config.zoo_models
    if config.zoo_epochs is not None:
        zoo["epochs"] = config.zoo_epochs
    pretrain = dict(preset["pretrain"])
    if config.pretrain_epochs is not None:
        pretrain["epochs"] = config.pretrain_epochs
    threads = config.num_threads
    return {
        "zoo": ZooConfig(output_dir=dirs["zoo"], seed=config.seed, num_threads=threads, **zoo),
        "convert": ConvertConfig(
            zoo_dir=dirs["zoo"], output_dir=dirs["convert"], overwrite=True, num_threads=threads, **preset["convert"]
        ),
        "pretrain": PretrainConfig(
            dataset=dirs["convert"],
            output_dir=dirs["pretrain"],
            seed=config.seed,
            num_threads=threads,
            resume_from_checkpoint="auto",
            **pretrain,
        ),
        "predict": PredictConfig(
            model=dirs["pretrain"],
            dataset=dirs["convert"],
            output_dir=dirs["predict"],
            seed=config.seed,
            num_threads=threads,
            **preset["predict"],
        ),
        "generate": GenerateConfig(
            model=dirs["pretrain"],
            dataset=dirs["convert"],
            output_dir=dirs["generate"],
            overwrite=True,
            seed=config.seed,
            num_threads=threads,
            **preset["generate"],
        ),
    }


def _complete(stage: str, folder: Path, stage_config: Any) -> bool:
    """Whether a stage's output folder holds a finished result (every stage writes its marker file last)."""
    if stage == "zoo":
        return len(list(folder.glob("models/*/DONE"))) == stage_config.num_models
    markers = {
        "convert": "meta/info.json",
        "pretrain": "model.safetensors",
        "predict": "results.json",
        "generate": "evaluation.json",
    }
    return (folder / markers[stage]).is_file()


def _config_dict(stage_config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(stage_config), default=str))


def _run_stage(stage: str, stage_config: Any) -> dict[str, Any]:
    """Run one stage; returns what REPORT.md needs of it."""
    if stage == "zoo":
        summary = build_zoo(stage_config)
        return {"num_models": summary["num_models"], "final_test_acc": summary["final_test_acc"]}
    if stage == "convert":
        result = convert_zoo(stage_config)
        info = result.info
        return {
            "num_checkpoints": info.num_checkpoints,
            "num_tokens": info.num_tokens,
            "token_size": info.token_size,
            "splits": {name: split.num_models for name, split in info.splits.items()},
        }
    if stage == "pretrain":
        folder = pretrain(stage_config)
        state = read_trainer_state(folder)
        evaluations = [entry for entry in state.get("log_history", []) if "val/r2" in entry]
        return {
            "optimizer_steps": state.get("optimizer_steps"),
            "epochs": state.get("epoch"),
            "val_reconstruction_r2": evaluations[-1]["val/r2"] if evaluations else None,
        }
    if stage == "predict":
        results = predict_properties(stage_config)
        return {"files": results["files"]}
    if stage == "generate":
        result = generate(stage_config)
        zero_shot = [row["test_acc"] for row in result.zero_shot]
        return {"zero_shot_mean": sum(zero_shot) / len(zero_shot)}
    raise ValueError(f"Unknown stage {stage!r}; expected one of {STAGES}.")


def run_quickstart(config: QuickstartConfig, stage_callback: Callable[[str, str], None] | None = None) -> dict:
    """Run (or resume) the whole pipeline and write `REPORT.md`; returns the summary written to the state file.

    Args:
        config (`QuickstartConfig`): the run.
        stage_callback (`Callable[[str, str], None]`, *optional*): called with `(stage, "start" | "skip" | "done")`,
            e.g. to show progress on a console (library code only logs).
    """
    start = time.perf_counter()
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    state = read_json(state_path, "the state of an earlier quickstart run", missing=None) or {}
    stages_state: dict[str, Any] = state.get("stages", {})
    configs = stage_configs(config)
    changed = config.rerun
    with torch_threads(config.num_threads):
        for index, stage in enumerate(STAGES, 1):
            stage_config = configs[stage]
            options = _config_dict(stage_config)
            folder = root / STAGE_DIRS[stage]
            recorded = stages_state.get(stage, {})
            # A changed stage invalidates everything downstream of it.
            changed = changed or recorded.get("options") != options
            if not changed and _complete(stage, folder, stage_config):
                logger.info("Stage %d/%d %s: complete in %s, skipped.", index, len(STAGES), stage, folder)
                if stage_callback:
                    stage_callback(stage, "skip")
                continue
            if changed and recorded and folder.exists():
                # This run wrote the folder for other options (its own or an upstream stage's): resuming from it would
                # continue another run, so start the stage afresh. A stage killed with the same options and
                # unchanged inputs is not `changed` and resumes from its partial work.
                logger.info(
                    "Stage %s: options or inputs changed since %s was written; starting it afresh.", stage, folder
                )
                shutil.rmtree(folder)
            logger.info("Stage %d/%d %s: running into %s.", index, len(STAGES), stage, folder)
            if stage_callback:
                stage_callback(stage, "start")
            # Recorded before the stage runs, so an interrupted stage is resumed (same options) rather than cleared.
            stages_state[stage] = {"options": options}
            write_json_atomic(state_path, {"config": asdict(config), "stages": stages_state})
            stage_start = time.perf_counter()
            outcome = _run_stage(stage, stage_config)
            stages_state[stage] = {
                "options": options,
                "seconds": round(time.perf_counter() - stage_start, 1),
                "outcome": outcome,
            }
            # Record each finished stage at once, so an interrupted run resumes after it.
            write_json_atomic(state_path, {"config": asdict(config), "stages": stages_state})
            if stage_callback:
                stage_callback(stage, "done")
    seconds = round(time.perf_counter() - start, 1)
    summary = {"config": asdict(config), "stages": stages_state, "seconds_this_run": seconds}
    write_json_atomic(state_path, summary)
    report = build_report(root, stages_state, seconds, seed=config.seed)
    write_text_atomic(root / REPORT_FILE, report)
    summary["report"] = str(root / REPORT_FILE)
    return summary


def _section_of(markdown: str, start: str) -> str:
    """The lines of `markdown` from the first line starting with `start` to the next blank line after a table."""
    lines = markdown.splitlines()
    begin = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
    if begin is None:
        return ""
    end = begin
    while end < len(lines) and lines[end].strip():
        end += 1
    return "\n".join(lines[begin:end])


def build_report(root: Path, stages_state: Mapping[str, Any], seconds_this_run: float, seed: int | None = None) -> str:
    """`REPORT.md`: timings, the zoo, the property-prediction table and the generation table, with their plots, and
    under each table a sentence, computed from the results, saying whether SANE beat each control."""
    lines = ["# SANE quickstart report", ""]
    architecture = stages_state.get("zoo", {}).get("options", {}).get("architecture", "cnn_s")
    members = "small CNNs" if architecture == "cnn_s" else f"`{architecture}` networks"
    lines.append(
        "The whole SANE pipeline on the embedded default task (scikit-learn digits, 8x8 images, 10 classes): a zoo "
        f"of {members}, its tokenized dataset, a pretrained SANE, property prediction from SANE embeddings and "
        "model generation. Every folder named below is under this report's folder."
    )
    lines += ["", "## Stages", "", "| stage | folder | seconds (last run of the stage) |", "|---|---|---|"]
    total = 0.0
    for stage in STAGES:
        entry = stages_state.get(stage, {})
        total += entry.get("seconds", 0.0)
        lines.append(f"| {stage} | `{STAGE_DIRS[stage]}/` | {entry.get('seconds', '-')} |")
    lines += ["", f"Sum of the stages: {total:.0f} s; this invocation: {seconds_this_run:.0f} s.", ""]

    zoo = stages_state.get("zoo", {}).get("outcome", {})
    convert = stages_state.get("convert", {}).get("outcome", {})
    if zoo:
        spread = zoo.get("final_test_acc") or {}
        lines += ["## The zoo", ""]
        lines.append(
            f"{zoo.get('num_models')} models; final-epoch test accuracy: "
            + ", ".join(f"{key} {value:.3f}" for key, value in spread.items())
            + "."
        )
        if convert:
            lines.append(
                f"Dataset: {convert.get('num_checkpoints')} checkpoints, {convert.get('num_tokens')} tokens of width "
                f"{convert.get('token_size')} each; models per split {convert.get('splits')}."
            )
        pretrain = stages_state.get("pretrain", {}).get("outcome", {})
        if pretrain:
            r2 = pretrain.get("val_reconstruction_r2")
            lines.append(
                f"SANE: {pretrain.get('epochs')} epochs, {pretrain.get('optimizer_steps')} optimizer steps; validation "
                "reconstruction R² " + (f"{r2:.3f}." if r2 is not None else "not measured.")
            )
        lines.append("")

    predict_md = root / STAGE_DIRS["predict"] / "results.md"
    if predict_md.is_file():
        text = predict_md.read_text(encoding="utf-8")
        lines += ["## Property prediction (SANE §5)", ""]
        table = _section_of(text, "|")
        lines += [table, ""] if table else ["(no table)", ""]
        plots = sorted((root / STAGE_DIRS["predict"]).glob("*.png"))
        for plot in plots:
            relative = plot.relative_to(root).as_posix()
            lines.append(f"![{plot.stem}]({relative})")
        results_json = root / STAGE_DIRS["predict"] / "results.json"
        if results_json.is_file():
            probe = summarize_probe(read_json(results_json, "the results.json sane-predict writes"), "test_acc")
            lines += [probe_verdict(probe, seed), ""]
        lines += ["", f"Full results: `{STAGE_DIRS['predict']}/results.md`, `results.json`.", ""]

    generated = root / STAGE_DIRS["generate"]
    evaluation_md = generated / "evaluation.md"
    if evaluation_md.is_file():
        text = evaluation_md.read_text(encoding="utf-8")
        lines += ["## Generated models (SANE §6)", ""]
        description = _section_of(text, "`test_acc`")
        table = _section_of(text, "| population")
        lines += [description, "", table, ""] if table else ["(no table)", ""]
        evaluation_json = generated / "evaluation.json"
        if evaluation_json.is_file():
            evaluation = read_json(evaluation_json, "the evaluation.json sane-evaluate writes")
            lines += [generation_verdict(evaluation, seed), ""]
        if (generated / "evaluation.png").is_file():
            lines.append(f"![accuracy vs fine-tuning epoch]({STAGE_DIRS['generate']}/evaluation.png)")
        lines += ["", f"Full evaluation: `{STAGE_DIRS['generate']}/evaluation.md`; models: `model_000/`, ...", ""]
    return "\n".join(lines).rstrip() + "\n"


# -------------------------------------------------------------------------------------------------------------------
# The figures a user judges SANE by (REPORT.md's sentences and the quality study)
# -------------------------------------------------------------------------------------------------------------------


def summarize_probe(results: Mapping[str, Any], property_name: str = "test_acc") -> dict[str, Any]:
    """The best SANE row and the best row of each baseline for one property, every row chosen on validation.

    Returns `{"sane": {...}, "s(W)": {...}, "W": {...}}`, each with `method`, `scaling`, `validation`, `test` and
    `test_interval` (bootstrap over test models) when present.
    """

    summary = {}
    for name, method in (("sane", "SANE"), ("s(W)", "s(W)"), ("W", "W")):
        best = best_record(results["records"], property_name, method)
        if best is None:
            continue
        summary[name] = {
            "method": best["method"],
            "scaling": best["scaling"],
            VALIDATION_SPLIT: split_scores(best["scores"])[VALIDATION_SPLIT],
            "test": best["scores"]["test"],
            "test_interval": best.get("intervals", {}).get("test"),
        }
    return summary


def summarize_generation(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Zero-shot test accuracy of every population of `evaluation.json`: mean, std and a bootstrap interval of the
    mean over models; plus the paired interval of `generated - noise_control` (control `i` is generated model `i`'s
    nearest anchor moved by the same distance)."""
    summary: dict[str, Any] = {}
    per_model = {}
    for name, population in evaluation.get("populations", {}).items():
        values = [history[0]["test_acc"] for history in population["per_model"]]
        per_model[name] = values
        mean = sum(values) / len(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[name] = {"mean": mean, "std": std, "interval": list(mean_interval(values)), "n": len(values)}
    if "generated" in per_model and "noise_control" in per_model:
        differences = [g - c for g, c in zip(per_model["generated"], per_model["noise_control"])]
        summary["generated_minus_noise_control"] = {
            "mean": sum(differences) / len(differences),
            "interval": list(mean_interval(differences)),
        }
    return summary


def _with_interval(value: float, interval: Sequence[float] | None) -> str:
    if interval and all(v is not None and math.isfinite(v) for v in interval):
        return f"{value:.3f} [95% interval {interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def _comparison(margin: float) -> str:
    """The verb for a difference printed with three decimals: one that rounds to zero is a tie, not a win."""
    if abs(margin) < 0.0005:
        return "is level with"
    return "beats" if margin > 0 else "does not beat"


def probe_verdict(probe: Mapping[str, Any], seed: int | None = None) -> str:
    """One sentence: did SANE's best probe (chosen on validation) beat s(W) and W on `test_acc`, with the figures."""
    sane = probe.get("sane")
    if not sane:
        return "No SANE probe of `test_acc` was run."
    parts = [
        f"Seed {seed}: " if seed is not None else "",
        f"SANE's best `test_acc` probe ({sane['method']}, chosen on validation) reaches test R² "
        f"{_with_interval(sane['test'], sane.get('test_interval'))}",
    ]
    verdicts = []
    for baseline in ("s(W)", "W"):
        other = probe.get(baseline)
        if not other:
            continue
        margin = sane["test"] - other["test"]
        word = _comparison(margin)
        verdicts.append(
            f"it {word} {baseline} ({_with_interval(other['test'], other.get('test_interval'))}; difference "
            f"{margin:+.3f})"
        )
    return "".join(parts) + ("; " + " and ".join(verdicts) if verdicts else "") + "."


def generation_verdict(evaluation: Mapping[str, Any], seed: int | None = None) -> str:
    """Sentences on the generated models against the anchors, the noise control (plain and given SUB's selection),
    the encoded+decoded anchors and training from scratch, with the figures of `evaluation.json`."""
    summary = summarize_generation(evaluation)
    generated = summary.get("generated")
    if not generated:
        return "No generated models were evaluated."
    sentences = []
    prefix = f"Seed {seed}: " if seed is not None else ""
    anchors = summary.get("anchors")
    text = f"{prefix}generated models reach zero-shot test accuracy {_with_interval(generated['mean'], generated['interval'])}"
    if anchors:
        text += f", {100 * generated['mean'] / anchors['mean']:.0f}% of the anchors' {anchors['mean']:.3f}"
    sentences.append(text + ".")
    control = summary.get("noise_control")
    if control:
        margin = generated["mean"] - control["mean"]
        in_stds = margin / control["std"] if control["std"] > 0 else math.inf
        difference = summary["generated_minus_noise_control"]
        verdict = "beats" if margin > 0 and difference["interval"][0] > 0 else "does not beat"
        sentences.append(
            f"SANE {verdict} the anchor+noise control at the same distance ({control['mean']:.3f} ± "
            f"{control['std']:.3f}): by {margin:+.3f}, {in_stds:.1f} of the control's standard deviations (paired "
            f"95% interval of the difference {difference['interval'][0]:+.3f} to {difference['interval'][1]:+.3f})."
        )
    selected = summary.get("noise_control_selected")
    if selected:
        margin = generated["mean"] - selected["mean"]
        word = _comparison(margin)
        sentences.append(
            "Given the same best-of-candidates selection, the control reaches "
            f"{_with_interval(selected['mean'], selected['interval'])}: SANE {word} it (difference {margin:+.3f})."
        )
    reconstructed = summary.get("anchors_reconstructed")
    if reconstructed:
        sentences.append(
            f"Encoded+decoded anchors: {_with_interval(reconstructed['mean'], reconstructed['interval'])}."
        )
    populations = evaluation.get("populations", {})
    if "generated" in populations and "scratch" in populations:
        epochs = populations["scratch"]["epochs"]
        gen_curve = populations["generated"]["curves"]["test_acc"]["mean"]
        scratch_curve = populations["scratch"]["curves"]["test_acc"]["mean"]
        if len(epochs) > 1:
            word = "above" if gen_curve[1] > scratch_curve[-1] else "not above"
            sentences.append(
                f"After one fine-tuning epoch the generated models ({gen_curve[1]:.3f}) are {word} training from "
                f"scratch after {epochs[-1]} ({scratch_curve[-1]:.3f})."
            )
    return " ".join(sentences)
