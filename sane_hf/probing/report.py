"""The report of a property-prediction run (`predict.py`): `results.md` (the comparison tables) and the PNG plots
(predicted vs. true per property for SANE, a 2-D PCA of the SANE embeddings), each written atomically; and the names
of the files a run writes."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import VALIDATION_SPLIT, split_scores
from ..hub.probe_records import (
    MAIN_METHODS,
    best_record,
    find_record,
    main_records,
    main_scaling,
)
from .probe import SPLITS


logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PCA_PLOT = "pca_sane_embeddings.png"
_MAIN_HEADERS = {"SANE mean": "SANE linear probe (mean)"}


def sane_method_name(pooling: str) -> str:
    """Row name of the linear probe on a SANE pooling (`"SANE mean"`, `"SANE concat"`, ...)."""
    return f"SANE {pooling}"


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _format_test(record: Mapping[str, Any] | None) -> str:
    """A record's test score with its bootstrap interval over test models, e.g. `0.900 [0.768, 0.947]`."""
    if record is None:
        return ""
    interval = record.get("intervals", {}).get("test")
    text = _format(record["scores"].get("test"))
    if interval and all(v is not None and math.isfinite(v) for v in interval):
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def results_markdown(results: Mapping[str, Any]) -> str:
    """The Markdown report: the main comparison (test scores), all probes by feature scaling, and every record."""
    records = results["records"]
    properties = list(dict.fromkeys(r["property"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    scaling_main = main_scaling(records)
    config = results.get("config", {})
    lines = [
        "# Property prediction from SANE embeddings",
        "",
        f"Model: `{config.get('model')}`. Dataset: `{config.get('dataset')}` "
        f"({', '.join(f'{k} {v}' for k, v in results['dataset']['num_checkpoints'].items())} checkpoints).",
        "",
        "Test R² (numeric properties: ridge probe, alpha chosen on validation, docs/method.md#probes) or test accuracy "
        "(categorical properties: linear classifier, §5.3). Linear probes use "
        + ("features as upstream (not standardized)." if scaling_main == "none" else "train-standardized features.")
        + " The fine-tuned SANE trains the encoder and a head end to end. The last column is the SANE row (any "
        "pooling, scaling, or the fine-tuned encoder) with the best validation score. In brackets: 95% bootstrap "
        "interval over the test split's models (all checkpoints of a drawn model).",
        "",
    ]
    main = [m for m in MAIN_METHODS if m in methods]
    headers = [_MAIN_HEADERS.get(m, m) for m in main] + ["best SANE row (chosen on validation)"]
    lines += ["| property | metric | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    table = main_records(results)
    for prop in properties:
        cells = [_format_test(table[prop].get(m)) for m in main]
        best = best_record(records, prop)
        cells.append(f"{_format_test(best)} ({best['method']}, {best['scaling']})" if best else "")
        metric = next(r["metric"] for r in records if r["property"] == prop)
        lines.append(f"| {prop} | {metric} | " + " | ".join(cells) + " |")

    lines += ["", "## Every method, test score by feature scaling", ""]
    header = ["method", "scaling", *properties]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        for scaling in dict.fromkeys(r["scaling"] for r in records if r["method"] == method):
            row = [find_record(records, prop, method, scaling) for prop in properties]
            cells = [_format_test(r) for r in row]
            lines.append(f"| {method} | {scaling} | " + " | ".join(cells) + " |")

    lines += ["", "## All records", ""]
    lines += [
        "| property | method | scaling | train | validation | test | selected | features | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        scores = split_scores(r["scores"])  # results.json of earlier versions keyed validation "val"
        chosen = next(
            (f"{key}={r[key]:g}" for key in ("alpha", "C", "learning_rate", "best_epoch") if r.get(key) is not None),
            "",
        )
        lines.append(
            f"| {r['property']} | {r['method']} | {r['scaling']} | {_format(scores.get('train'))} | "
            f"{_format(scores.get(VALIDATION_SPLIT))} | {_format(scores.get('test'))} | {chosen} | {r['num_features']} | "
            f"{r['seconds']} |"
        )
    for prop, reason in results.get("skipped", {}).items():
        lines.append(f"\nSkipped `{prop}`: {reason}.")
    timings = results.get("timings", {})
    if timings:
        lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + "."]
    return "\n".join(lines) + "\n"


def _matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save_figure_atomic(figure, path: Path) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pca_2d(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Project `[N, F]` features onto their first two principal components (centred SVD), `[N, 2]`."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:2]
    projected = x @ components.T
    if projected.shape[1] < 2:
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def write_plots(
    output_dir: str | os.PathLike,
    plot_data: Mapping[str, Mapping[str, Mapping[str, Any]]],
    tasks: Mapping[str, str],
    embedded: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, Mapping[str, np.ndarray]],
) -> list[str]:
    """Predicted-vs-true scatter per numeric property (SANE linear probe, and fine-tuned if run) and a PCA of the
    mean SANE embeddings coloured by test accuracy. Returns the file names written ([] without matplotlib)."""
    if not _matplotlib_available():
        logger.warning("matplotlib is not installed: skipping the PNG plots (pip install matplotlib to get them).")
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    written = []
    colors = dict(zip(SPLITS, ("#c7c7c7", "#ff7f0e", "#1f77b4")))
    for prop, panels in plot_data.items():
        if tasks.get(prop) != "regression" or not panels:
            continue
        figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
        for axis, (title, result) in zip(axes[0], panels.items()):
            low, high = math.inf, -math.inf
            for split in SPLITS:
                if split not in result["predictions"]:
                    continue
                y, y_hat = result["targets"][split], result["predictions"][split]
                r2 = result["scores"].get(split)
                axis.scatter(y, y_hat, s=6, alpha=0.5, color=colors[split], label=f"{split} R² {_format(r2)}")
                if len(y):
                    low, high = min(low, y.min(), y_hat.min()), max(high, y.max(), y_hat.max())
            if math.isfinite(low):
                axis.plot([low, high], [low, high], color="black", linewidth=0.8)
            axis.set_xlabel(f"true {prop}")
            axis.set_ylabel(f"predicted {prop}")
            axis.set_title(title)
            axis.legend(fontsize=8)
        name = f"scatter_{_safe_name(prop)}.png"
        _save_figure_atomic(figure, output_dir / name)
        plt.close(figure)
        written.append(name)

    split_names = [s for s in SPLITS if s in embedded]
    features = np.concatenate([embedded[s]["embeddings"].numpy() for s in split_names])
    if len(features) >= 2:
        color_key = next(
            (k for k in ("test_acc", *targets.get("train", {})) if all(k in targets[s] for s in split_names)), None
        )
        projected = pca_2d(features)
        figure, axis = plt.subplots(figsize=(5.5, 4.5))
        if color_key is not None and tasks.get(color_key) == "regression":
            values = np.concatenate([np.asarray(targets[s][color_key], dtype=np.float64) for s in split_names])
            points = axis.scatter(projected[:, 0], projected[:, 1], c=values, s=6, cmap="viridis")
            figure.colorbar(points, ax=axis, label=color_key)
        else:
            axis.scatter(projected[:, 0], projected[:, 1], s=6)
        axis.set_xlabel("PC 1")
        axis.set_ylabel("PC 2")
        axis.set_title("SANE embeddings (mean over tokens), all splits")
        _save_figure_atomic(figure, output_dir / PCA_PLOT)
        plt.close(figure)
        written.append(PCA_PLOT)
    return written


__all__ = [
    "pca_2d",
    "results_markdown",
    "write_plots",
]
