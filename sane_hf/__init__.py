"""sane_hf: SANE weight-space learning (Schürholt, Mahoney, Borth, ICML 2024) as a Hugging Face integration.

Importing `sane_hf` registers `SaneConfig`/`SaneModel`/`SaneForPreTraining` with `AutoConfig`/`AutoModel`/
`AutoModelForPreTraining` (model_type `"sane"`), so `AutoModel.from_pretrained(...)` loads SANE checkpoints without
`trust_remote_code`.
"""

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
    TokenizedLayer,
    TokenLayout,
    TokenNormalization,
    TokenPermuter,
    permutation_spec_from_module,
)


__version__ = VERSION

__all__ = [
    "SaneConfig",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "PermutationSpec",
    "TokenLayout",
    "TokenPermuter",
    "permutation_spec_from_module",
    "TokenNormalization",
    "TokenizedLayer",
    "__version__",
]
