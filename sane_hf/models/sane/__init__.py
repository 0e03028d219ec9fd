"""SANE as a transformers model.

`configuration_sane.py` and `modeling_sane.py` form the Hub-portable folder: they import only torch, transformers and
each other, and `save_pretrained` copies them next to the weights for `trust_remote_code` users. Importing this
package also registers the model with the Auto classes, so `sane_hf` users never need `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_sane import SaneConfig
from .loading import check_sane_folder, load_sane_folder
from .modeling_sane import (
    SANE_CHECKSUMS_NAME,
    SANE_LAYOUT_NAME,
    SANE_NORMALIZATION_NAME,
    SaneForPreTraining,
    SaneForPreTrainingOutput,
    SaneModel,
    SaneModelOutput,
    SanePreTrainedModel,
    haloed_window_index,
)


# exist_ok: re-importing (e.g. after importlib.reload, or a remote-code copy registered first) must not fail.
AutoConfig.register(SaneConfig.model_type, SaneConfig, exist_ok=True)
AutoModel.register(SaneConfig, SaneModel, exist_ok=True)
AutoModelForPreTraining.register(SaneConfig, SaneForPreTraining, exist_ok=True)

__all__ = [
    "SANE_CHECKSUMS_NAME",
    "SANE_LAYOUT_NAME",
    "SANE_NORMALIZATION_NAME",
    "SaneConfig",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "check_sane_folder",
    "haloed_window_index",
    "load_sane_folder",
]
