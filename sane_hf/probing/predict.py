"""Property prediction end to end (`predict_properties`): features, probes, fine-tuning; `report.py` writes the report.

`predict_properties(PredictConfig)` reproduces SANE's downstream evaluation (docs/method.md#probes) on a tokenized zoo:

1. embed every checkpoint of every split with the SANE encoder (`embed_zoo`; mean pooling as upstream, plus the
   per-layer and concatenated variants);
2. compute the baselines on the same rows from the same normalized tokens: raw weights W and layer statistics s(W)
   (`baselines.py`, docs/method.md#probes);
3. fit the linear probe of each property on each feature set (ridge R² with alpha chosen on validation, or the classifier's
   accuracy; `probe.py`, docs/method.md#probes), with features as upstream and/or standardized on train;
4. optionally fine-tune the encoder end to end (`SaneForPropertyPrediction`) and gradient boosting as extra rows;
5. write `results.json` (one record per property x method x feature scaling: scores on train/validation/test, the chosen
   alpha), `results.md` (the comparison tables) and PNG plots (predicted vs. true per property for SANE, a 2-D PCA of
   the SANE embeddings coloured by test accuracy), each file atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.hub_dataset import SaneZooDataset, load_zoo_dataset
from ..data.zoo_permutations import build_permuter
from ..hub.probe_records import (
    METHOD_FINETUNED,
    METHOD_SW,
    METHOD_W,
)
from ..hub.sane_cards import write_sane_card
from ..models.sane import SaneModel, load_sane_folder
from ..tokenization import TokenLayout, TokenPermuter
from ..tokenization.normalization import token_transform_for
from ..tokenization.processing_sane import load_sane_processor
from ..utils.bootstrap import bootstrap_over_groups
from ..utils.checks import check_finite_weights
from ..utils.io import check_output_apart_from_inputs, json_safe, write_text_atomic
from ..utils.processes import Processes
from ..utils.repo_ids import load_local_or_hub
from ..utils.threads import torch_threads
from .baselines import raw_weights, weight_statistics
from .configs import PredictConfig
from .embed import check_model_matches_layout, embed_zoo_across_processes, iter_token_batches, read_columns
from .finetune import finetune_property_predictor
from .probe import SPLITS, fit_gradient_boosting, fit_probe, infer_task, r2_score, valid_rows
from .report import RESULTS_JSON, RESULTS_MD, results_markdown, sane_method_name, write_plots


logger = logging.getLogger(__name__)


# The checkpoint's epoch is an id column of the dataset, not in `info.properties`, but a property to predict.
EPOCH_COLUMN = "epoch"


def load_sane(value: str, device: str | torch.device = "cpu") -> SaneModel:
    """A pretrained `SaneModel` from a folder or Hub id, with clear errors for missing folders/repos."""

    def loader(source: str) -> SaneModel:
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"--model {source}: the folder has no config.json; is it a saved SANE?")
        return load_sane_folder(source)

    model = load_local_or_hub(value, "SANE model", "model", loader)
    check_finite_weights(model, f"--model {value}")
    return model.to(device).eval()


def load_zoo(value: str, revision: str | None = None) -> SaneZooDataset:
    """A tokenized zoo from a folder or Hub dataset id, with clear errors for missing folders/repos."""
    return load_local_or_hub(
        value, "tokenized zoo dataset", "dataset", lambda s: load_zoo_dataset(s, revision=revision)
    )


def available_properties(zoo: SaneZooDataset) -> list[str]:
    """Properties of a zoo that can be predicted: `epoch` and every property column."""
    return [EPOCH_COLUMN, *[name for name in zoo.info.properties if name != EPOCH_COLUMN]]


def check_properties(zoo: SaneZooDataset, properties: Sequence[str]) -> None:
    """Raise a `ValueError` listing the available properties if one of `properties` is not in the zoo."""
    available = available_properties(zoo)
    unknown = [name for name in properties if name not in available]
    if unknown:
        raise ValueError(f"Unknown propert{'y' if len(unknown) == 1 else 'ies'} {unknown}; this zoo has {available}.")


def select_rows(split_dataset, epochs: Sequence[int] | None) -> np.ndarray:
    """Row indices of a split, restricted to checkpoints of `epochs` when given."""
    if epochs is None:
        return np.arange(split_dataset.num_rows, dtype=np.int64)
    epoch = read_columns(split_dataset, [EPOCH_COLUMN])[EPOCH_COLUMN]
    return np.flatnonzero(np.isin(epoch, np.asarray(list(epochs), dtype=np.float64))).astype(np.int64)


def _permuter_or_none(zoo: SaneZooDataset) -> TokenPermuter | None:
    """The zoo architecture's permutation augmentation, or None (with a warning) when it cannot be derived."""
    try:
        return build_permuter(zoo)
    except (ValueError, KeyError) as err:
        logger.warning("No permutation augmentation for this zoo (%s); permutation options are ignored.", err)
        return None


def baseline_features(
    split_dataset,
    layout: TokenLayout,
    rows: Sequence[int] | None = None,
    batch_size: int = 256,
    include_padding: bool = False,
    raw: bool = True,
) -> dict[str, torch.Tensor]:
    """W (`raw=True`) and s(W) features of one split, from its normalized tokens, in batches (docs/method.md#probes)."""
    mask = layout.mask
    outputs: dict[str, list[torch.Tensor]] = {METHOD_W: []} if raw else {}
    outputs[METHOD_SW] = []
    for _, tokens in iter_token_batches(split_dataset, batch_size, rows):
        outputs[METHOD_SW].append(weight_statistics(tokens, layout, include_padding=include_padding))
        if raw:
            outputs[METHOD_W].append(raw_weights(tokens, mask))
    return {name: torch.cat(values) for name, values in outputs.items() if values}


def score_intervals(
    result: Mapping[str, Any], model_ids: Mapping[str, np.ndarray], seed: int = 0
) -> dict[str, list[float]]:
    """95% bootstrap intervals of a probe's score per split, resampling *models* (all checkpoints of a drawn model).

    `model_ids[split]` names the model of every row the probe was given; rows the probe dropped (missing targets)
    are matched through `result["targets"]`'s length, and a split whose rows cannot be matched gets no interval.
    """
    intervals = {}
    for split, predictions in result.get("predictions", {}).items():
        targets = np.asarray(result["targets"][split])
        ids = model_ids.get(split)
        if ids is None or len(ids) != len(targets):
            continue
        if result["metric"] == "r2":
            y, y_hat = targets.astype(np.float64), np.asarray(predictions, dtype=np.float64)

            def statistic(rows: np.ndarray, y=y, y_hat=y_hat) -> float:
                return r2_score(y[rows], y_hat[rows])

        else:
            correct = np.asarray([str(a) == str(b) for a, b in zip(predictions, targets)], dtype=np.float64)

            def statistic(rows: np.ndarray, correct=correct) -> float:
                return float(correct[rows].mean())

        intervals[split] = list(bootstrap_over_groups(ids, statistic, seed=seed))
    return intervals


def _record(
    property_name: str,
    method: str,
    scaling: str,
    result: Mapping[str, Any],
    num_features: int,
    seconds: float,
    model_ids: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    record = {
        "property": property_name,
        "method": method,
        "task": result["task"],
        "metric": result["metric"],
        "scaling": scaling,
        "scores": {split: result["scores"].get(split) for split in SPLITS if split in result["scores"]},
        "num_features": num_features,
        "num_samples": result.get("num_samples"),
        "seconds": round(seconds, 3),
    }
    for key in ("alpha", "C", "learning_rate", "selected_on", "classes", "best_epoch", "epochs_run"):
        if key in result:
            record[key] = result[key]
    if model_ids is not None:
        record["intervals"] = score_intervals(result, model_ids)
    return record


def _valid_ids(model_ids: Mapping[str, np.ndarray], targets: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The model id of every row a probe keeps (rows with a missing target are dropped, as `fit_probe` does)."""
    return {split: np.asarray(ids)[valid_rows(targets[split])] for split, ids in model_ids.items() if split in targets}


def predict_properties(cfg: PredictConfig) -> dict[str, Any] | None:
    """Run property prediction as configured and write the report into `cfg.output_dir`.

    Under `accelerate launch` / torchrun the processes share out the embedding; the main process fits the probes and
    writes the report, and the other processes return `None` once their share is embedded.

    Returns:
        `dict`: the content of `results.json` (`config`, `dataset`, `model`, `records`, `timings`, `files`).

    Raises:
        `FileNotFoundError`: the model or dataset folder does not exist (or the Hub id cannot be loaded).
        `ValueError`: the SANE's token size (or position tables) do not fit the dataset, a property is unknown, or
        `output_dir` is, contains or lies inside the model or dataset folder.
    """
    with torch_threads(cfg.num_threads):
        return _predict_properties(cfg)


def _predict_properties(cfg: PredictConfig) -> dict[str, Any] | None:
    start = time.perf_counter()
    check_output_apart_from_inputs(cfg.output_dir, {"model": cfg.model, "dataset": cfg.dataset})
    model_folder = Path(cfg.model).expanduser()
    if cfg.update_model_card and model_folder.is_dir() and not os.access(model_folder, os.W_OK):
        raise PermissionError(
            f"--model {cfg.model}: the folder is read-only, but predict adds the probe results to its README.md "
            "(update_model_card); make it writable or pass --update_model_card false."
        )
    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Under a launch every process embeds its share of each split (one process per GPU, or CPU processes) and the
    # main process alone fits the probes and writes (docs/architecture.md#work-over-processes).
    processes = Processes.current(cpu=device == "cpu")
    if processes.count > 1 and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', processes.index)}"
    zoo = load_zoo(cfg.dataset, cfg.dataset_revision)
    check_properties(zoo, cfg.properties)
    model = load_sane(cfg.model, device)
    layout = zoo.layout
    processor = load_sane_processor(cfg.model)
    trained_layout = processor.layout if processor is not None else None
    check_model_matches_layout(model, layout, cfg.model, cfg.dataset, trained_layout=trained_layout)
    transform = token_transform_for(processor, zoo)
    splits = {name: zoo.splits[name] for name in SPLITS if name in zoo.splits}
    rows = {name: select_rows(dataset, cfg.checkpoint_epochs) for name, dataset in splits.items()}
    if len(rows.get("train", [])) == 0:
        available = sorted(set(int(e) for e in splits["train"]["epoch"])) if "train" in splits else []
        raise ValueError(
            f"No train checkpoints to fit probes on: `checkpoint_epochs` {cfg.checkpoint_epochs} selects none of "
            f"the dataset's train epochs {available}."
        )
    rows = {name: r for name, r in rows.items() if len(r)}
    splits = {name: splits[name] for name in rows}
    dtypes = {EPOCH_COLUMN: "int64", **zoo.info.properties}
    targets = {name: read_columns(splits[name], list(cfg.properties), rows[name]) for name in splits}
    model_ids = {name: read_columns(splits[name], ["model_id"], rows[name])["model_id"] for name in splits}
    tasks = {p: infer_task(p, targets["train"][p], dtypes.get(p)) for p in cfg.properties}
    logger.info("Predicting %s on splits %s.", tasks, {name: len(r) for name, r in rows.items()})
    timings: dict[str, float] = {}

    # 1. SANE embeddings: one encoder pass per split gives every pooling.
    t0 = time.perf_counter()

    def embed_splits(**options) -> dict[str, Any]:
        return {
            name: embed_zoo_across_processes(
                model,
                dataset,
                layout,
                batch_size=cfg.embed_batch_size,
                precision=cfg.precision,
                pooling=cfg.poolings,
                rows=rows[name],
                token_transform=transform,
                **options,
            )
            for name, dataset in splits.items()
        }

    embedded = embed_splits()
    needs_permuter = cfg.embed_permutations > 0 or (cfg.finetune_epochs > 0 and cfg.finetune_permutations)
    permuter = _permuter_or_none(zoo) if needs_permuter else None
    averaged = {}
    if cfg.embed_permutations and permuter is not None:
        averaged = embed_splits(
            permuter=permuter,
            num_permutations=cfg.embed_permutations,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    timings["embed"] = round(time.perf_counter() - t0, 2)
    if not processes.is_main:
        return None
    feature_sets: dict[str, dict[str, torch.Tensor]] = {}

    # 2. Baselines on the same rows.
    if cfg.baselines:
        t0 = time.perf_counter()
        num_real = int(layout.mask.sum())
        raw = num_real <= cfg.max_raw_features
        if not raw:
            logger.info("Skipping the W baseline: %d values per checkpoint > max_raw_features.", num_real)
        per_split = {
            name: baseline_features(dataset, layout, rows[name], include_padding=cfg.include_padding, raw=raw)
            for name, dataset in splits.items()
        }
        for method in per_split["train"]:
            feature_sets[method] = {name: features[method] for name, features in per_split.items()}
        timings["baselines"] = round(time.perf_counter() - t0, 2)
    for pooling in cfg.poolings:
        feature_sets[sane_method_name(pooling)] = {name: out["features"][pooling] for name, out in embedded.items()}
    for pooling in cfg.poolings if averaged else []:
        feature_sets[f"{sane_method_name(pooling)} (perm-avg)"] = {
            name: out["features"][pooling] for name, out in averaged.items()
        }

    # 3. Linear probes.
    t0 = time.perf_counter()
    scalings = ["none", "standardize"] if cfg.feature_scaling == "both" else [cfg.feature_scaling]
    records: list[dict[str, Any]] = []
    plot_data: dict[str, dict[str, Any]] = {p: {} for p in cfg.properties}
    skipped: dict[str, str] = {}
    solver_caches: dict[str, dict] = {}  # one ridge decomposition per feature set and scaling, shared by properties
    for prop in cfg.properties:
        prop_targets = {name: targets[name][prop] for name in splits}
        train_values = {str(v) for v in prop_targets["train"] if not (isinstance(v, float) and math.isnan(v))}
        if tasks[prop] == "classification" and len(train_values) < 2:
            skipped[prop] = f"categorical with {len(train_values)} class(es) in train: nothing to classify"
            logger.warning("Skipping %s: %s.", prop, skipped[prop])
            continue
        for method, features in feature_sets.items():
            for scaling in scalings if tasks[prop] == "regression" else ["standardize"]:
                t1 = time.perf_counter()
                result = fit_probe(
                    features,
                    prop_targets,
                    task=tasks[prop],
                    name=prop,
                    standardize=scaling == "standardize",
                    seed=cfg.seed,
                    solver_cache=solver_caches.setdefault(method, {}),
                )
                records.append(
                    _record(
                        prop,
                        method,
                        scaling,
                        result,
                        features["train"].shape[1],
                        time.perf_counter() - t1,
                        _valid_ids(model_ids, prop_targets),
                    )
                )
                if method == sane_method_name(cfg.poolings[0]) and scaling == scalings[0]:
                    plot_data[prop][f"SANE linear probe ({cfg.poolings[0]})"] = result
        logger.info("Probed %s (%s).", prop, tasks[prop])
    timings["probes"] = round(time.perf_counter() - t0, 2)

    # 4. Extras: gradient boosting (non-linear), fine-tuning.
    regression = [p for p in cfg.properties if tasks[p] == "regression"]
    if cfg.gradient_boosting and regression:
        t0 = time.perf_counter()
        for method in (METHOD_SW, sane_method_name("mean")):
            if method not in feature_sets:
                continue
            for prop in regression:
                t1 = time.perf_counter()
                result = fit_gradient_boosting(
                    feature_sets[method], {name: targets[name][prop] for name in splits}, seed=cfg.seed
                )
                records.append(
                    _record(
                        prop,
                        f"{method} + gradient boosting",
                        "none",
                        result,
                        feature_sets[method]["train"].shape[1],
                        time.perf_counter() - t1,
                    )
                )
        timings["gradient_boosting"] = round(time.perf_counter() - t0, 2)
    finetune_info = None
    if cfg.finetune_epochs and regression:
        t0 = time.perf_counter()
        tuned = finetune_property_predictor(
            model,
            splits,
            layout,
            regression,
            rows_by_split=rows,
            epochs=cfg.finetune_epochs,
            batch_size=cfg.finetune_batch_size,
            lr=cfg.finetune_lr,
            weight_decay=cfg.finetune_weight_decay,
            patience=cfg.finetune_patience,
            hidden_size=cfg.finetune_hidden_size,
            pooling=cfg.finetune_pooling,
            seed=cfg.seed,
            token_transform=transform,
            permuter=permuter if cfg.finetune_permutations else None,
        )
        for prop in regression:
            result = {
                "task": "regression",
                "metric": "r2",
                "scores": tuned["scores"][prop],
                "num_samples": {split: len(y) for split, y in tuned["targets"][prop].items()},
                "best_epoch": tuned["best_epoch"],
                "epochs_run": tuned["epochs_run"],
            }
            latent_dim = model.config.latent_dim
            result["predictions"], result["targets"] = tuned["predictions"][prop], tuned["targets"][prop]
            records.append(
                _record(
                    prop,
                    METHOD_FINETUNED,
                    "end-to-end",
                    result,
                    latent_dim,
                    tuned["seconds"],
                    _valid_ids(model_ids, {name: targets[name][prop] for name in splits}),
                )
            )
            plot_data[prop][METHOD_FINETUNED] = {
                "predictions": tuned["predictions"][prop],
                "targets": tuned["targets"][prop],
                "scores": tuned["scores"][prop],
            }
        finetune_info = {"history": tuned["history"], "best_epoch": tuned["best_epoch"], "seconds": tuned["seconds"]}
        timings["finetune"] = round(time.perf_counter() - t0, 2)

    # 5. Report. A folder this run creates is removed again if writing fails (e.g. the card cannot be written).
    output_dir = Path(cfg.output_dir)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        files = [RESULTS_JSON, RESULTS_MD]
        if cfg.plots:
            t0 = time.perf_counter()
            files += write_plots(output_dir, plot_data, tasks, embedded, targets)
            timings["plots"] = round(time.perf_counter() - t0, 2)
        timings["total"] = round(time.perf_counter() - start, 2)
        results = {
            "config": cfg.to_dict(),
            "dataset": {
                "source": cfg.dataset,
                "num_checkpoints": {name: len(r) for name, r in rows.items()},
                "num_tokens": layout.num_tokens,
                "token_size": layout.token_size,
                "num_layers": layout.num_layers,
                "num_real_values": int(layout.mask.sum()),
            },
            "model": {
                "source": cfg.model,
                "latent_dim": model.config.latent_dim,
                "window_size": model.config.window_size,
                "num_parameters": int(model.num_parameters()),
            },
            "tasks": tasks,
            "skipped": skipped,
            "records": records,
            "finetune": finetune_info,
            "timings": timings,
            "files": files,
        }
        if cfg.update_model_card and model_folder.is_dir():
            # The probe R² belong in the model's own card (`model-index`), which a later push uploads. Written before
            # the results, so that a card that cannot be written leaves no results behind either.

            write_sane_card(model_folder, probe_results=json_safe(results))
        write_text_atomic(output_dir / RESULTS_JSON, json.dumps(json_safe(results), indent=2) + "\n")
        write_text_atomic(output_dir / RESULTS_MD, results_markdown(results))
    except BaseException:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    logger.info("Wrote %s to %s in %.1f s.", ", ".join(files), output_dir, timings["total"])
    return results


__all__ = [
    "available_properties",
    "baseline_features",
    "check_properties",
    "load_sane",
    "load_zoo",
    "predict_properties",
    "select_rows",
]
