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

import re


ZOO_FORMAT = "sane_hf-zoo"
ZOO_FORMAT_VERSION = 1
ZOO_CONFIG_NAME = "zoo_config.json"
MODELS_DIR = "models"
PARAMS_NAME = "params.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DONE_NAME = "DONE"
CHECKPOINT_FILE = re.compile(r"^epoch_(\d+)\.safetensors$")


def model_id_for(index: int) -> str:
    """The folder name of zoo model `index`: `f"model_{index:04d}"`."""
    return f"model_{index:04d}"


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint of `epoch`: `f"epoch_{epoch:04d}.safetensors"` (matches `CHECKPOINT_FILE`)."""
    return f"epoch_{epoch:04d}.safetensors"
