"""Property prediction from SANE embeddings (docs/method.md#probes): embeddings, linear probes, baselines, fine-tuning.

```python
>>> from sane_hf.probing import PredictConfig, predict_properties
>>> results = predict_properties(PredictConfig(model="runs/sane", dataset="runs/zoo_ds", output_dir="runs/predict"))
```
"""

from .baselines import raw_weights, weight_statistics, weight_statistics_names
from .configs import PredictConfig
from .embed import (
    POOLINGS,
    check_model_matches_layout,
    embed_zoo,
    embed_zoo_across_processes,
    iter_token_batches,
    pool_token_latents,
    read_columns,
)
from .finetune import SaneForPropertyPrediction, finetune_property_predictor
from .predict import predict_properties
from .probe import (
    RIDGE_ALPHAS,
    RidgeSolver,
    fit_classifier,
    fit_gradient_boosting,
    fit_probe,
    fit_ridge,
    infer_task,
    r2_score,
)
from .report import results_markdown


__all__ = [
    "POOLINGS",
    "PredictConfig",
    "RIDGE_ALPHAS",
    "RidgeSolver",
    "SaneForPropertyPrediction",
    "check_model_matches_layout",
    "embed_zoo",
    "embed_zoo_across_processes",
    "finetune_property_predictor",
    "fit_classifier",
    "fit_gradient_boosting",
    "fit_probe",
    "fit_ridge",
    "infer_task",
    "iter_token_batches",
    "pool_token_latents",
    "predict_properties",
    "r2_score",
    "raw_weights",
    "read_columns",
    "results_markdown",
    "weight_statistics",
    "weight_statistics_names",
]
