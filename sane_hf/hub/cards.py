"""Cards of the artifacts `sane_hf` publishes, rendered from Jinja templates shipped as package data.

every card comes from `ModelCard`/`DatasetCard.from_template(...)` with a template in
`sane_hf/hub/templates/`; optional slots use `| default("[More Information Needed]", true)`; YAML front matter is
produced by `huggingface_hub` (never concatenated by hand).
"""

from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import DatasetCard, DatasetCardData

from ..constants import PAPER_URL


if TYPE_CHECKING:
    from ..data.info import SaneDatasetInfo

SANE_CODE_URL = "https://github.com/HSG-AIML/SANE"
# One citation for every card (the templates render it as `{{ citation }}`).
SANE_CITATION = """```bibtex
@inproceedings{schuerholt2024sane,
  title     = {Towards Scalable and Versatile Weight Space Learning},
  author    = {Sch{\\"u}rholt, Konstantin and Mahoney, Michael W. and Borth, Damian},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year      = {2024},
  eprint    = {2406.09997},
  archivePrefix = {arXiv}
}
```"""
DATASET_CARD_TAGS = ("sane", "weight-space-learning", "model-zoo")
DATASET_CARD_TEMPLATE = "dataset_card.md"

# Descriptions of the properties the zoo readers produce (docs/zoo_dataset_format.md and the zoo formats).
PROPERTY_DESCRIPTIONS = {
    "test_acc": "test accuracy of the checkpoint",
    "train_acc": "training accuracy",
    "val_acc": "validation accuracy",
    "test_loss": "test loss",
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "ggap": "generalization gap, train_acc - test_acc",
    "training_iteration": "ray-tune training iteration of the result line",
    "seed": "training seed of the model",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "momentum": "optimizer momentum",
    "optimizer": "optimizer",
    "scheduler": "learning-rate schedule",
    "init": "weight initialization",
    "activation": "activation function",
    "dropout": "dropout rate",
    "batch_size": "training batch size",
    "num_epochs": "number of training epochs of the model",
    "model_type": "architecture name in the source zoo",
}


# Properties that measure a checkpoint rather than describe how its model was made: not generating factors.
NON_FACTOR_PROPERTIES = frozenset(
    {"test_acc", "train_acc", "val_acc", "test_loss", "train_loss", "val_loss", "ggap", "training_iteration"}
)
# Up to this many distinct values a factor's values are listed one by one; above, only their range.
MAX_LISTED_FACTOR_VALUES = 12


def generating_factors(root: str | os.PathLike, info: SaneDatasetInfo) -> list[dict[str, str]]:
    """How the zoo's models differ: per hyper-parameter property, its values and how many models have each.

    Read from the dataset's own parquet shards under `root` (only the `model_id` and property columns; one row per
    model). Properties constant over the zoo are listed too (e.g. the batch size), metrics are not.
    """
    import pyarrow.parquet as pq

    names = [name for name in info.properties if name not in NON_FACTOR_PROPERTIES]
    if not names:
        return []
    per_model: dict[str, dict[str, Any]] = {}
    for split in info.splits.values():
        for file in split.files:
            table = pq.read_table(Path(root) / file, columns=["model_id", *names]).to_pydict()
            for index, model_id in enumerate(table["model_id"]):
                per_model.setdefault(model_id, {name: table[name][index] for name in names})
    rows = []
    for name in names:
        counts: dict[Any, int] = {}
        for values in per_model.values():
            counts[values[name]] = counts.get(values[name], 0) + 1
        known = sorted((v for v in counts if v is not None), key=lambda v: (isinstance(v, str), v))
        if len(known) <= MAX_LISTED_FACTOR_VALUES:
            text = ", ".join(
                f"`{v:g}` ({counts[v]})" if isinstance(v, float) else f"`{v}` ({counts[v]})" for v in known
            )
        else:
            text = f"{len(known)} distinct values, `{known[0]}` to `{known[-1]}`"
        if None in counts:
            text += f"; missing for {counts[None]}"
        rows.append({"name": name, "text": text})
    return rows


def load_template(name: str) -> str:
    """The text of a card template shipped in `sane_hf/hub/templates/`."""
    return resources.files("sane_hf.hub").joinpath("templates", name).read_text(encoding="utf-8")


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M"


def _task_description(task: Any) -> str | None:
    if not task:
        return None
    if isinstance(task, str):
        return task
    if isinstance(task, dict):
        lines = []
        if task.get("description"):
            lines.append(str(task["description"]))
        lines.append("```json\n" + json.dumps(task, indent=2, sort_keys=True) + "\n```")
        return "\n\n".join(lines)
    return json.dumps(task)


def build_dataset_card(
    info: SaneDatasetInfo,
    repo_id: str | None = None,
    *,
    pretty_name: str | None = None,
    description: str | None = None,
    license: str = "cc-by-4.0",
    tags: list[str] | None = None,
    root: str | os.PathLike | None = None,
) -> DatasetCard:
    """The `README.md` of a tokenized zoo.

    The front matter's `configs` map each non-empty split to `data/<split>-*.parquet`, which makes
    `datasets.load_dataset(repo_or_folder)` and the Hub viewer read the parquet without `sane_hf`.

    Args:
        info (`SaneDatasetInfo`): the dataset's `meta/info.json`.
        repo_id (`str`, *optional*): the Hub repo the card is for (used in the loading snippets).
        pretty_name (`str`, *optional*): title; defaults to "SANE tokenized zoo: <architecture>".
        description (`str`, *optional*): an extra paragraph under the title.
        license (`str`, *optional*, defaults to `"cc-by-4.0"`).
        tags (`list[str]`, *optional*): added to `sane`, `weight-space-learning`, `model-zoo`.
        root (`str` or `os.PathLike`, *optional*): the dataset folder; when given, the card lists the zoo's
            generating factors read from its shards (`generating_factors`).
    """
    splits = info.nonempty_splits
    card_data = DatasetCardData(
        license=license,
        tags=list(dict.fromkeys([*DATASET_CARD_TAGS, *(tags or [])])),
        pretty_name=pretty_name or f"SANE tokenized zoo: {info.architecture or 'unknown architecture'}",
        size_categories=_size_category(info.num_checkpoints),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in splits],
            }
        ],
    )
    split_rows = [
        {
            "name": name,
            "num_models": split.num_models,
            "num_checkpoints": split.num_checkpoints,
            "num_shards": len(split.files),
        }
        for name, split in info.splits.items()
    ]
    property_rows = [
        {"name": name, "dtype": dtype, "description": PROPERTY_DESCRIPTIONS.get(name, "property from the source zoo")}
        for name, dtype in info.properties.items()
    ]
    if info.tokens_normalized:
        normalization = (
            f"per-layer `{info.normalization_mode}` (SANE §1.8), statistics fitted on the train split only and "
            "applied to every split; see `meta/normalization.json`."
        )
    else:
        normalization = "none (tokens are the raw weights)."
    filtering = info.filtering
    dropped = filtering.get("dropped_checkpoint_counts") or {}
    threshold = "inf" if math.isinf(info.weight_threshold) else f"{info.weight_threshold:g}"
    filtering_summary = (
        f"weight threshold {threshold}; kept {filtering.get('num_checkpoints_kept', info.num_checkpoints)} of "
        f"{filtering.get('num_checkpoints_read', info.num_checkpoints)} checkpoints read"
        + (f" (dropped: {', '.join(f'{n} {r}' for r, n in sorted(dropped.items()))})" if dropped else "")
        + f"; {len(filtering.get('dropped_models', []))} models dropped, "
        f"{len(filtering.get('skipped_models', []))} model folders skipped"
    )
    summary = {k: v for k, v in info.to_dict().items() if k not in ("splits", "filtering", "features", "source")}
    summary["splits"] = {
        name: {"num_models": s.num_models, "num_checkpoints": s.num_checkpoints} for name, s in info.splits.items()
    }
    source = info.source or {}
    return DatasetCard.from_template(
        card_data,
        template_str=load_template(DATASET_CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        description=description,
        repo_id=repo_id,
        architecture=info.architecture,
        model_kwargs_json=json.dumps(info.model_kwargs, indent=2, sort_keys=True) if info.model_kwargs else None,
        num_models=info.num_models,
        num_checkpoints=info.num_checkpoints,
        num_tokens=info.num_tokens,
        token_size=info.token_size,
        num_layers=info.num_layers,
        tokenize_bn_stats=info.tokenize_bn_stats,
        ignore_bn=info.ignore_bn,
        normalization_description=normalization,
        canonicalized=info.canonicalized,
        split_seed=info.split_seed,
        split_fractions=info.split_fractions,
        split_rows=split_rows,
        property_rows=property_rows,
        factor_rows=generating_factors(root, info) if root is not None else None,
        epochs_description="all available" if info.epochs is None else ", ".join(map(str, info.epochs)),
        filtering_summary=filtering_summary,
        task_description=_task_description(source.get("task")),
        source_zoo=source.get("zoo_dir"),
        source_format=source.get("zoo_format"),
        info_summary=json.dumps(summary, indent=2),
        format=info.format,
        format_version=info.format_version,
        paper_url=PAPER_URL,
        code_url=SANE_CODE_URL,
        citation=SANE_CITATION,
    )
