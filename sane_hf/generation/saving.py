"""What a generation run produces (`GenerationResult`) and how it is saved (docs/method.md#samplers): one
`save_pretrained` folder per network with its card, the `generation.json` record of the run, and the whole output
folder pushed as one Hub repository."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from torch import nn

from ..hub.generated_cards import build_generated_model_card
from ..utils.io import file_checksum, make_temporary_dir
from ..utils.repo_ids import hub_id_or_none
from .bn_conditioning import has_batchnorm
from .configs import GenerateConfig
from .evaluate import (
    EvaluationReport,
    write_evaluation_report,
)
from .samplers import (
    AnchorSet,
    LatentSamples,
)


logger = logging.getLogger(__name__)


GENERATION_JSON = "generation.json"


MODEL_FOLDER = "model_{:03d}"


ANCHOR_FOLDER = "anchor_{:03d}"


ANCHORS_DIR = "anchors"


@dataclass
class GenerationResult:
    """What `generate_models` / `generate` produced.

    Args:
        models (`list[nn.Module]`): the generated networks (BN-conditioned, eval mode), best first when scored.
        samples (`LatentSamples`): their latents, anchor indices and selection scores.
        anchors (`AnchorSet`): the anchors (tokens, latents, ids, architecture arguments).
        anchor_models (`list[nn.Module]`): the anchors as networks of the target architecture (real zoo weights).
        config (`GenerateConfig`): the run configuration.
        task (`TaskData`): the task the networks were conditioned/scored/evaluated on.
        timings (`dict[str, float]`): wall times in seconds (`load`, `anchors`, `sampling`, `evaluation`, ...).
        distances (`list[float]`): weight-space L2 distance of each network to its nearest anchor.
        zero_shot (`list[dict]`): zero-shot train/val/test loss and accuracy of each network.
        bootstrap_history (`list[dict]`, *optional*): per-round score statistics of bootstrapping.
        report (`EvaluationReport`, *optional*): the comparison with baselines, when evaluated.
        output_dir (`Path`, *optional*), url (`str`, *optional*): where it was saved / pushed.
    """

    models: list[nn.Module]
    samples: LatentSamples
    anchors: AnchorSet
    anchor_models: list[nn.Module]
    config: GenerateConfig
    task: Any
    timings: dict[str, float] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)
    zero_shot: list[dict[str, float]] = field(default_factory=list)
    bootstrap_history: list[dict[str, float]] | None = None
    report: EvaluationReport | None = None
    output_dir: Path | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `generation.json` content (JSON-serializable)."""
        scores = None if self.samples.scores is None else [float(s) for s in self.samples.scores]
        return {
            "sampler": self.config.sampler,
            "sane_model": self.config.model,
            "dataset": self.config.dataset,
            "config": self.config.to_dict(),
            "task": self.task.info(),
            "anchors": self.anchors.to_dict(),
            "models": [
                {
                    "folder": MODEL_FOLDER.format(index),
                    "anchor_index": int(anchor),
                    "anchor_model_id": self.anchors.model_ids[int(anchor)],
                    "selection_score": None if scores is None else scores[index],
                    "distance_to_nearest_anchor": self.distances[index] if self.distances else None,
                    "zero_shot": self.zero_shot[index] if self.zero_shot else None,
                }
                for index, anchor in enumerate(self.samples.anchor_index.tolist())
            ],
            "bootstrap_history": self.bootstrap_history,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _model_results(result: GenerationResult, index: int) -> dict[str, float]:
    results = {"zero-shot test accuracy": result.zero_shot[index]["test_acc"]} if result.zero_shot else {}
    if result.report is not None and "generated" in result.report.populations:
        history = result.report.populations["generated"].histories[index]
        last = history[-1]
        if last["epoch"] > 0:
            results[f"test accuracy after {last['epoch']} fine-tuning epochs"] = last["test_acc"]
    return results


def _card_context(result: GenerationResult) -> dict[str, Any]:
    config = result.config
    anchors = result.anchors
    base_model = config.base_model or hub_id_or_none(config.model)
    bn = None
    if result.models and has_batchnorm(result.models[0]):
        bn = (
            f"{config.bn_iterations} forward passes of {config.bn_batch_size} `{config.bn_split}` images, BatchNorm "
            "layers in train mode, statistics re-estimated as a cumulative average"
            if config.bn_condition
            else "disabled"
        )
    generation = {
        "sampler": config.sampler,
        "kde_mode": config.kde_mode,
        "bandwidth": config.bandwidth,
        "seed": config.seed,
        "num_candidates": config.num_candidates if config.sampler == "subsample" else None,
        "score_split": config.score_split if config.sampler in ("subsample", "bootstrap") else None,
        "anchor_split": anchors.split,
        "anchor_property": anchors.property_name,
        "anchors": anchors.model_ids,
        "sane_model": config.model,
        "dataset": config.dataset,
    }
    return {
        "architecture": getattr(result.models[0], "zoo_name", None) or type(result.models[0]).__name__,
        "sampler": config.sampler,
        "sane_model": config.model,
        "base_model": base_model,
        "zoo_dataset": config.dataset,
        "task_name": result.task.name,
        "generation": {k: v for k, v in generation.items() if v is not None},
        "anchor_summary": (
            f"{len(anchors)} anchors: the best models of the `{anchors.split}` split by `{anchors.property_name}` "
            f"at epoch {sorted(set(anchors.epochs))[0] if len(set(anchors.epochs)) == 1 else sorted(set(anchors.epochs))}"
            f", {anchors.property_name} {min(anchors.values):.4f}-{max(anchors.values):.4f}"
        ),
        "bn_description": bn,
        "reset_classifier": config.reset_classifier,
        "num_classes": getattr(result.models[0], "num_classes", None),
        "score_split": config.score_split,
    }


def save_generated_models(
    result: GenerationResult, output_dir: str | os.PathLike, overwrite: bool = False, plot: bool = True
) -> Path:
    """Write a generation run atomically: `model_000/`, ... (`config.json` + `model.safetensors` + `README.md`),
    `anchors/anchor_000/`, ..., `generation.json`, the evaluation report and a repo-level `README.md`.

    Everything is written into a temporary sibling folder that is renamed into place at the end, so `output_dir`
    never holds a half-written run.

    Raises:
        `FileExistsError`: `output_dir` exists and is not empty, and `overwrite` is `False`.
    """

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_dir(output_dir)  # also removes the leftovers of a killed run
    try:
        context = _card_context(result)
        repo_id = result.config.push_to_hub
        scores = None if result.samples.scores is None else result.samples.scores.tolist()
        members = []
        for index, model in enumerate(result.models):
            folder = tmp / MODEL_FOLDER.format(index)
            folder.mkdir()
            anchor = int(result.samples.anchor_index[index])
            card = build_generated_model_card(
                **context,
                model_name=f"SANE-generated {context['architecture']} #{index:03d}",
                repo_id=repo_id,
                subfolder=folder.name,
                num_parameters=model.num_parameters() if hasattr(model, "num_parameters") else None,
                anchor_model_id=result.anchors.model_ids[anchor],
                distance=result.distances[index] if result.distances else None,
                selection_score=None if scores is None else scores[index],
                results=_model_results(result, index),
                auto_class=getattr(model, "transformers_auto_class", None),
            )
            # The mixin writes README.md only if absent, so the generated card written first is kept.
            card.save(folder / "README.md")
            model.save_pretrained(folder)
            members.append(
                {
                    "folder": folder.name,
                    "anchor": result.anchors.model_ids[anchor],
                    "score": "" if scores is None else f"{scores[index]:.4f}",
                    "zero_shot": f"{result.zero_shot[index]['test_acc']:.4f}" if result.zero_shot else "",
                }
            )
        anchors_dir = tmp / ANCHORS_DIR
        anchors_dir.mkdir()
        for index, model in enumerate(result.anchor_models):
            model.save_pretrained(anchors_dir / ANCHOR_FOLDER.format(index))
        results = {}
        if result.zero_shot:
            values = [row["test_acc"] for row in result.zero_shot]
            results["mean zero-shot test accuracy"] = sum(values) / len(values)
        if result.report is not None:
            mean, _ = result.report.populations["generated"].curve("test_acc")
            epochs = result.report.populations["generated"].epochs
            if epochs[-1] > 0:
                results[f"mean test accuracy after {epochs[-1]} fine-tuning epochs"] = mean[-1]
            ensemble = result.report.populations["generated"].ensemble.get(f"epoch_{epochs[-1]}", {})
            if "test_acc" in ensemble:
                results[f"ensemble test accuracy after {epochs[-1]} fine-tuning epochs"] = ensemble["test_acc"]
        build_generated_model_card(
            **context,
            model_name=f"SANE-generated {context['architecture']} networks ({len(result.models)})",
            repo_id=repo_id,
            results=results,
            members=members,
            auto_class=getattr(result.models[0], "transformers_auto_class", None) if result.models else None,
        ).save(tmp / "README.md")
        record = result.to_dict()
        # Size and sha256 of every weight file, which `sane-evaluate` verifies before loading the networks.
        record["checksums"] = {
            path.relative_to(tmp).as_posix(): file_checksum(path) for path in sorted(tmp.rglob("*.safetensors"))
        }
        (tmp / GENERATION_JSON).write_text(json.dumps(record, indent=1, default=str) + "\n")
        if result.report is not None:
            write_evaluation_report(result.report, tmp, plot=plot)
        if output_dir.exists():
            old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.output_dir = output_dir
    logger.info("Saved %d generated networks to %s.", len(result.models), output_dir)
    return output_dir


def push_generated_models(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    include_anchors: bool = False,
) -> str:
    """Upload a folder written by `save_generated_models` as ONE Hub model repo, in one commit.

    The repo holds the repo-level `README.md`, `generation.json`, the evaluation report and the subfolders
    `model_000/`, ... . The `anchors/` folder (copies of zoo checkpoints, which live in the source dataset) is left out
    unless `include_anchors=True`. Stale `model_*` folders of an earlier upload are deleted in the same commit.

    Returns:
        `str`: the commit URL.
    """

    folder = Path(folder)
    if not (folder / GENERATION_JSON).is_file():
        raise FileNotFoundError(
            f"{folder / GENERATION_JSON}: missing; push_generated_models uploads sane-generate output."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message=commit_message or "Upload SANE-generated models (sane_hf)",
        ignore_patterns=None if include_anchors else [f"{ANCHORS_DIR}/*"],
        delete_patterns=["model_*/*"],
    )
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s to the Hub model repo %s (%s).", folder, repo_id, url)
    return url
