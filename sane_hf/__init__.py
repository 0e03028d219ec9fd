"""sane_hf: SANE weight-space learning (Schürholt, Mahoney, Borth, ICML 2024) as a Hugging Face integration.

Importing `sane_hf` registers `SaneConfig`/`SaneModel`/`SaneForPreTraining` with `AutoConfig`/`AutoModel`/
`AutoModelForPreTraining` (model_type `"sane"`), and the weight processor `SaneProcessor` with `AutoFeatureExtractor`,
so `AutoModel.from_pretrained(...)` / `AutoFeatureExtractor.from_pretrained(...)` load SANE checkpoints without
`trust_remote_code`.
"""

from transformers import AutoFeatureExtractor

from .constants import VERSION
from .models.sane import (
    SaneConfig,
    SaneForPreTraining,
    SaneForPreTrainingOutput,
    SaneModel,
    SaneModelOutput,
    SanePreTrainedModel,
)
from .tokenization import (
    PermutationSpec,
    SaneProcessor,
    TokenizedLayer,
    TokenLayout,
    TokenNormalization,
    TokenPermuter,
    permutation_spec_from_module,
)


__version__ = VERSION

# exist_ok: re-importing (e.g. after importlib.reload, or a remote-code copy registered first) must not fail.
AutoFeatureExtractor.register(SaneConfig, SaneProcessor, exist_ok=True)

__all__ = [
    "SaneConfig",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "SaneProcessor",
    "PermutationSpec",
    "TokenLayout",
    "TokenPermuter",
    "permutation_spec_from_module",
    "TokenNormalization",
    "TokenizedLayer",
    "__version__",
]
