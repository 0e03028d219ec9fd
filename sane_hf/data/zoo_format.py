"""The sane_hf zoo folder format: the one place its names live, for the writer (`zoo_builder.py`) and the reader
(`zoo.py`'s `SaneHfZooReader`). docs/zoo_dataset_format.md describes the format.

```
<zoo_dir>/zoo_config.json                     {"format": ZOO_FORMAT, "format_version": ZOO_FORMAT_VERSION, ...}
         /models/<model_id>/params.json       the model's generating factors and constructor arguments
                           /metrics.jsonl     one line per epoch
                           /checkpoints/epoch_<E:04d>.safetensors
                           /DONE              written last: a folder without it is unfinished
```
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


ZOO_FORMAT = "sane_hf-zoo"
ZOO_FORMAT_VERSION = 1
ZOO_CONFIG_NAME = "zoo_config.json"
MODELS_DIR = "models"
PARAMS_NAME = "params.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DONE_NAME = "DONE"
CHECKPOINT_FILE = re.compile(r"^epoch_(\d+)\.safetensors$")
# Keys of one metrics.jsonl line, in order. Non-finite values (a diverged model) are written as JSON null.
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "ggap")
# The key of DONE that records the size and sha256 of every checkpoint file, which the reader verifies.
DONE_CHECKSUMS_KEY = "checkpoints"


def model_id_for(index: int) -> str:
    """The folder name of zoo model `index`: `f"model_{index:04d}"`."""
    return f"model_{index:04d}"


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint of `epoch`: `f"epoch_{epoch:04d}.safetensors"` (matches `CHECKPOINT_FILE`)."""
    return f"epoch_{epoch:04d}.safetensors"


def read_done(folder: str | Path) -> dict[str, Any] | None:
    """The `DONE` record of a model folder (`None`: no `DONE`, the model is unfinished).

    Raises a `ValueError` naming the file when `DONE` exists but is not the JSON object `sane-make-zoo` writes (e.g.
    an empty file made by hand): whether such a model is complete cannot be told.
    """
    path = Path(folder) / DONE_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        size = path.stat().st_size
        found = "an empty file" if size == 0 else f"{size} bytes that are not a JSON object"
        raise ValueError(
            f"{path}: found {found}; expected the JSON summary sane-make-zoo writes when a model has finished. If "
            f"the model was not finished, delete {DONE_NAME} and rerun sane-make-zoo to train it again."
        )
    return record
