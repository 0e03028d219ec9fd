"""The card of a pretrained SANE checkpoint (`README.md` next to `config.json`), from `templates/sane_model_card.md`.

Everything the card says is read from the checkpoint folder itself: `config.json` (the architecture),
`train_config.json` and `trainer_state.json` (written by `pretrain`; the trainer state also summarizes the training
zoo), the parameter count from the `model.safetensors` header, and the probe results of `sane-predict` (its
`results.json`, kept in the folder as `sane_probe_results.json`). So the card can be rebuilt at any time from the
folder alone: at the end of pretraining, when probe results arrive, and before a push that names the real repo id.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..constants import PAPER_URL
from ..utils.io import read_json, write_text_atomic
from ..utils.repo_ids import hub_id_or_none
from .cards import SANE_CITATION, SANE_CODE_URL, load_template
from .probe_records import MAIN_METHODS, main_records


if TYPE_CHECKING:
    from ..data.info import SaneDatasetInfo

logger = logging.getLogger(__name__)

SANE_MODEL_CARD_TEMPLATE = "sane_model_card.md"
SANE_MODEL_TAGS = ("sane", "weight-space-learning", "hyper-representations", "model-zoo")
CARD_NAME = "README.md"
# The `results.json` of `sane-predict` kept next to the weights, so every rebuild of the card shows the same results.
PROBE_RESULTS_NAME = "sane_probe_results.json"
_PROBE_RESULTS_EXPECTED = "the results.json written by sane-predict"
# trainer_state.json key holding `zoo_summary(...)` of the training zoo.
TRAINER_STATE_ZOO_KEY = "dataset"

# SaneConfig fields shown in the card, in this order.
_CONFIG_FIELDS = (
    "token_size",
    "d_model",
    "n_heads",
    "n_layers",
    "n_decoder_layers",
    "latent_dim",
    "window_size",
    "halo_size",
    "max_positions",
    "projection_dim",
    "projection_pooling",
    "dropout",
    "gamma",
    "temperature",
)
# train_config.json fields shown in the card (label, key).
_TRAINING_FIELDS = (
    ("batch size (windows per process)", "batch_size"),
    ("peak learning rate (OneCycle, AdamW)", "lr"),
    ("weight decay", "weight_decay"),
    ("gradient accumulation steps", "gradient_accumulation_steps"),
    ("gradient clipping (max norm)", "max_grad_norm"),
    ("multiplicative / additive noise per view", ("noise_multiplicative", "noise_additive")),
    ("random erasing probability", "erase_probability"),
    ("permutation augmentation (view 2)", "permutation_augmentation"),
    ("windows per checkpoint and epoch", "windows_per_checkpoint"),
    ("mixed precision", "mixed_precision"),
    ("seed", "seed"),
    ("initialized from", "init_from"),
)
_FINAL_METRICS = (
    ("train loss", "train/loss"),
    ("train reconstruction R²", "train/r2"),
    ("validation loss", "val/loss"),
    ("validation reconstruction R²", "val/r2"),
)


def zoo_summary(info: SaneDatasetInfo, source: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """What the SANE card says about its training zoo, as plain JSON (stored in `trainer_state.json`)."""
    task = (info.source or {}).get("task")
    return {
        "source": os.fspath(source),
        # Decided here, where a relative folder still resolves: a later rebuild may run from another directory.
        "hub_id": hub_id_or_none(source),
        "revision": revision,
        "architecture": info.architecture,
        "model_kwargs": info.model_kwargs,
        "task": task,
        "num_models": info.num_models,
        "num_checkpoints": info.num_checkpoints,
        "splits": {
            name: {"num_models": split.num_models, "num_checkpoints": split.num_checkpoints}
            for name, split in info.splits.items()
        },
        "num_tokens": info.num_tokens,
        "token_size": info.token_size,
        "num_layers": info.num_layers,
        "normalization": info.normalization_mode if info.tokens_normalized else None,
    }


def _num_parameters(folder: Path) -> int | None:
    """Parameter count from the safetensors header (no tensor is read)."""

    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _task_text(task: Any) -> str | None:
    if not task:
        return None
    if isinstance(task, Mapping):
        name = task.get("name")
        description = task.get("description")
        return " - ".join(str(part) for part in (name and f"`{name}`", description) if part) or json.dumps(task)
    return f"`{task}`"


def _score(record: Mapping[str, Any]) -> float | None:
    value = (record.get("scores") or {}).get("test")
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def probe_eval_results(results: Mapping[str, Any]) -> list[EvalResult]:
    """The SANE rows of the main comparison of a `results.json` (`sane-predict`) as `model-index` entries.

    One entry per property and SANE method (linear probe on the mean embedding, fine-tuned SANE): test R² for
    numeric properties (`metric_type: r_squared`), test accuracy for categorical ones. Baselines (W, s(W)) are not
    results of this model and stay in the card's text.
    """
    dataset = str((results.get("dataset") or {}).get("source") or (results.get("config") or {}).get("dataset"))
    dataset_id = hub_id_or_none(dataset) or Path(dataset).name
    eval_results = []
    for prop, methods in main_records(results).items():
        for method, record in methods.items():
            value = _score(record)
            if not method.startswith("SANE") or value is None:
                continue
            regression = record["metric"] == "r2"
            eval_results.append(
                EvalResult(
                    task_type="tabular-regression" if regression else "tabular-classification",
                    task_name="Model property prediction from weights",
                    dataset_type=dataset_id,
                    dataset_name=dataset_id,
                    dataset_split="test",
                    metric_type="r_squared" if regression else "accuracy",
                    metric_name=f"test {'R²' if regression else 'accuracy'} of {prop} ({method})",
                    metric_value=round(value, 4),
                )
            )
    return eval_results


def _probe_table(results: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    table = main_records(results)
    methods = [m for m in MAIN_METHODS if any(m in row for row in table.values())]
    rows = []
    for prop, row in table.items():
        metric = next((r["metric"] for r in row.values()), "")
        cells = []
        for method in methods:
            value = _score(row[method]) if method in row else None
            cells.append("" if value is None else f"{value:.3f}")
        rows.append({"property": prop, "metric": "R²" if metric == "r2" else metric, "cells": cells})
    headers = [("SANE linear probe (mean)" if m == "SANE mean" else m) for m in methods]
    return headers, rows


def _existing_card(folder: Path) -> ModelCard | None:
    path = folder / CARD_NAME
    if not path.is_file():
        return None
    return ModelCard.load(path, ignore_metadata_errors=True)


def is_sane_card(card: ModelCard | None) -> bool:
    """Whether a card was written by `build_sane_card` (so rebuilding it loses no hand-written prose)."""
    return card is not None and card.data.get("sane_card") is True


def build_sane_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    probe_results: Mapping[str, Any] | str | os.PathLike | None = None,
    zoo: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    license: str = "mit",
    description: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The `README.md` of a pretrained SANE folder (written by `pretrain` / `SaneModel.save_pretrained`).

    Args:
        folder (`str` or `os.PathLike`): the checkpoint folder; needs `config.json`, reads `train_config.json` and
            `trainer_state.json` when present.
        repo_id (`str`, *optional*): the Hub repo the card is for (usage snippets; default `<repo_id>`).
        probe_results (`Mapping` or path, *optional*): `results.json` of `sane-predict` (the dict or its path); its
            SANE rows become the `model-index`. Default: the folder's `sane_probe_results.json`, if any.
        zoo (`Mapping`, *optional*): `zoo_summary(...)` of the training zoo; default from `trainer_state.json`.
        model_name (`str`, *optional*): title and `model-index` name; default "SANE (<architecture> zoo)".
        license (`str`, *optional*, defaults to `"mit"`): license of the weights (`sane_hf`'s license).
        description (`str`, *optional*): an extra paragraph under the introduction.
        tags (`list[str]`, *optional*): added to the default tags.

    Raises:
        `FileNotFoundError`: `folder` has no `config.json`.
        `ValueError`: `config.json` is not a SANE config, or a JSON file is invalid.
    """
    folder = Path(folder)
    config = read_json(folder / "config.json", "the config.json of a saved SANE folder (build_sane_card)")
    if config.get("model_type") != "sane":
        raise ValueError(
            f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'sane' (a SaneModel)."
        )
    train_config = read_json(folder / "train_config.json", "the pretraining options", missing=None) or {}
    state = read_json(folder / "trainer_state.json", "the pretraining run's state", missing=None) or {}
    if state.get("mixed_precision"):
        # The precision that ran (train_config.json leaves it unset when the launcher decides).
        train_config = {**train_config, "mixed_precision": state["mixed_precision"]}
    zoo = dict(zoo if zoo is not None else state.get(TRAINER_STATE_ZOO_KEY) or {})
    if not zoo and train_config.get("dataset"):
        zoo = {"source": train_config["dataset"], "revision": train_config.get("dataset_revision")}

    if probe_results is None:
        probe_results = read_json(folder / PROBE_RESULTS_NAME, _PROBE_RESULTS_EXPECTED, missing=None)
    elif not isinstance(probe_results, Mapping):
        probe_results = read_json(probe_results, _PROBE_RESULTS_EXPECTED)
    eval_results, probe_headers, probe_rows, probe_dataset, probe_checkpoints = [], [], [], None, None
    if probe_results is not None:
        eval_results = probe_eval_results(probe_results)
        probe_headers, probe_rows = _probe_table(probe_results)
        probe_dataset = str(probe_results.get("dataset", {}).get("source"))
        checkpoints = probe_results.get("dataset", {}).get("num_checkpoints") or {}
        probe_checkpoints = ", ".join(f"{split} {n}" for split, n in checkpoints.items())

    architecture = zoo.get("architecture")
    name = model_name or (f"SANE ({architecture} zoo)" if architecture else "SANE")
    zoo_hub_id = zoo["hub_id"] if "hub_id" in zoo else hub_id_or_none(zoo.get("source"))
    base_model = hub_id_or_none(train_config.get("init_from"))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=license,
        tags=list(dict.fromkeys([*SANE_MODEL_TAGS, *([architecture] if architecture else []), *(tags or [])])),
        datasets=[zoo_hub_id] if zoo_hub_id else None,
        base_model=base_model,
        model_name=name,
        eval_results=eval_results or None,
        sane_card=True,
    )

    splits = zoo.get("splits") or {}
    zoo_size = None
    if zoo.get("num_models") is not None:
        zoo_size = f"{zoo['num_models']} networks, {zoo.get('num_checkpoints')} checkpoints" + (
            " (" + ", ".join(f"{s}: {v['num_models']} models" for s, v in splits.items()) + ")" if splits else ""
        )
    zoo_sentence = None
    if architecture:
        zoo_sentence = f"checkpoints of `{architecture}` networks" + (
            f" trained on {_task_text(zoo.get('task'))}." if zoo.get("task") else "."
        )
    config_rows = [{"name": key, "value": _format_value(config.get(key))} for key in _CONFIG_FIELDS if key in config]
    training_rows = []
    if state:
        processes = state.get("num_processes", 1)
        training_rows.append(
            {
                "name": "optimizer steps / epochs",
                "value": f"{state.get('optimizer_steps')} / {state.get('epoch')} on {processes} process(es)",
            }
        )
        if state.get("seconds") is not None:
            training_rows.append({"name": "wall time", "value": f"{float(state['seconds']) / 60:.1f} min"})
    for label, key in _TRAINING_FIELDS:
        if isinstance(key, tuple):
            if all(k in train_config for k in key):
                training_rows.append({"name": label, "value": " / ".join(_format_value(train_config[k]) for k in key)})
        elif train_config.get(key) is not None:
            training_rows.append({"name": label, "value": _format_value(train_config[key])})
    metric_rows = []
    history = state.get("log_history") or []
    for label, key in _FINAL_METRICS:
        value = next((entry[key] for entry in reversed(history) if entry.get(key) is not None), None)
        if value is not None:
            metric_rows.append({"name": label, "value": f"{float(value):.4f}"})
    num_parameters = _num_parameters(folder)

    return ModelCard.from_template(
        card_data,
        template_str=load_template(SANE_MODEL_CARD_TEMPLATE),
        model_name=name,
        description=description,
        repo_id=repo_id,
        token_size=config.get("token_size"),
        latent_dim=config.get("latent_dim"),
        num_tokens=zoo.get("num_tokens"),
        num_layers=zoo.get("num_layers"),
        num_parameters=f"{num_parameters:,}" if num_parameters is not None else None,
        zoo_source=zoo.get("source"),
        zoo_revision=zoo.get("revision"),
        zoo_hub_id=zoo_hub_id,
        zoo_architecture=architecture,
        zoo_model_kwargs_json=json.dumps(zoo["model_kwargs"], sort_keys=True) if zoo.get("model_kwargs") else None,
        zoo_task=_task_text(zoo.get("task")),
        zoo_size=zoo_size,
        zoo_sentence=zoo_sentence,
        config_rows=config_rows,
        training_rows=training_rows,
        metric_rows=metric_rows,
        probe_headers=probe_headers,
        probe_rows=probe_rows,
        probe_dataset=probe_dataset,
        probe_checkpoints=probe_checkpoints,
        paper_url=PAPER_URL,
        code_url=SANE_CODE_URL,
        citation=SANE_CITATION,
    )


def write_sane_card(
    folder: str | os.PathLike,
    *,
    probe_results: Mapping[str, Any] | str | os.PathLike | None = None,
    force: bool = False,
    **kwargs: Any,
) -> Path | None:
    """Write the card of a SANE folder (`build_sane_card`) to its `README.md` atomically.

    New `probe_results` are first stored as `sane_probe_results.json` in the folder (so later rebuilds, e.g. before a
    push, keep them). A `README.md` that `build_sane_card` did not write (a hand-written card) is left alone unless
    `force=True`; returns `None` then, else the card's path.
    """
    folder = Path(folder)
    path = folder / CARD_NAME
    if path.is_file() and not force and not is_sane_card(_existing_card(folder)):
        logger.warning("%s was not written by sane_hf; leaving it unchanged (pass force=True to replace it).", path)
        return None
    if probe_results is not None:
        if not isinstance(probe_results, Mapping):
            probe_results = read_json(probe_results, _PROBE_RESULTS_EXPECTED)
        card = build_sane_card(folder, probe_results=probe_results, **kwargs)  # fails before anything is written
        write_text_atomic(folder / PROBE_RESULTS_NAME, json.dumps(probe_results, indent=1) + "\n")
    else:
        card = build_sane_card(folder, **kwargs)
    write_text_atomic(path, str(card))
    logger.info("Wrote the SANE model card %s.", path)
    return path
