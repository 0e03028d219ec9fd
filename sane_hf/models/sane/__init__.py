"""SANE as a transformers model.

`configuration_sane.py`, `modeling_sane.py` and `pipeline_sane.py` form the Hub-portable folder: they import only torch,
transformers (and safetensors) and each other; `save_pretrained` copies the first two next to the weights for
`trust_remote_code` users, `add_embedding_pipeline` the third. Importing this
package also registers the model with the Auto classes, so `sane_hf` users never need `trust_remote_code`.
"""

import os
import shutil
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_sane import SaneConfig
from .loading import check_sane_folder, load_sane_folder
from .modeling_sane import (
    SANE_CHECKSUMS_NAME,
    SaneForPreTraining,
    SaneForPreTrainingOutput,
    SaneModel,
    SaneModelOutput,
    SanePreTrainedModel,
    haloed_window_index,
)
from .pipeline_sane import SANE_CUSTOM_PIPELINES, SaneEmbeddingPipeline


# exist_ok: re-importing (e.g. after importlib.reload, or a remote-code copy registered first) must not fail.
AutoConfig.register(SaneConfig.model_type, SaneConfig, exist_ok=True)
AutoModel.register(SaneConfig, SaneModel, exist_ok=True)
AutoModelForPreTraining.register(SaneConfig, SaneForPreTraining, exist_ok=True)


def add_embedding_pipeline(model: SanePreTrainedModel, save_directory: str | os.PathLike) -> None:
    """Make `pipeline("feature-extraction", model=<the saved folder or its Hub repo>, trust_remote_code=True)` embed
    checkpoints (the card's `pipeline_tag`): declares [`SaneEmbeddingPipeline`] in `model.config.custom_pipelines`
    and copies `pipeline_sane.py` into `save_directory`. Call it before `model.save_pretrained(save_directory)`."""
    model.config.custom_pipelines = {task: dict(info) for task, info in SANE_CUSTOM_PIPELINES.items()}
    os.makedirs(save_directory, exist_ok=True)
    shutil.copy2(Path(__file__).with_name("pipeline_sane.py"), Path(save_directory) / "pipeline_sane.py")


__all__ = [
    "SANE_CHECKSUMS_NAME",
    "SaneConfig",
    "SaneEmbeddingPipeline",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "add_embedding_pipeline",
    "check_sane_folder",
    "haloed_window_index",
    "load_sane_folder",
]
