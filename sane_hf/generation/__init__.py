"""Generating networks with a pretrained SANE (docs/method.md#samplers): samplers, haloed decoding, BatchNorm conditioning,
evaluation against baselines, and saving/pushing the generated networks.

Example:

```python
>>> from sane_hf.generation import GenerateConfig, generate
>>> result = generate(GenerateConfig(model="runs/sane", dataset="runs/zoo_ds", sampler="subsample", n=10))
>>> result.report.populations["generated"].curve("test_acc")[0]      # mean test accuracy per fine-tuning epoch
```
"""

from .bn_conditioning import batchnorm_modules, condition_batchnorm, has_batchnorm
from .configs import KDE_MODES, SAMPLERS, EvaluateConfig, FinetuneConfig, GenerateConfig
from .decode import (
    ModelDecoder,
    TransferPlan,
    build_model_from_state_dict,
    classifier_layer,
    decode_latents,
    plan_transfer,
    tokens_to_state_dict,
)
from .evaluate import (
    EvaluationReport,
    PopulationResult,
    add_isotropic_noise,
    classifier_parameter_names,
    compare_with_baselines,
    ensemble_metrics,
    evaluate_models,
    evaluate_population,
    finetune,
    noise_control_models,
    parameter_vector,
    plot_accuracy_curves,
    scratch_models,
    weight_distances,
    write_evaluation_report,
)
from .generate import SaneGenerator, finished_generation, generate, generate_models
from .samplers import (
    AnchorSet,
    BootstrapResult,
    LatentSamples,
    anchor_model_kwargs,
    bootstrap,
    embed_anchors,
    load_anchors,
    nearest_anchor,
    sample_diagonal_gaussian,
    sample_gaussian,
    sample_kde,
    select_anchor_rows,
    subsample,
    top_k,
)
from .saving import GenerationResult, push_generated_models, save_generated_models


__all__ = [
    "KDE_MODES",
    "SAMPLERS",
    "AnchorSet",
    "BootstrapResult",
    "EvaluateConfig",
    "EvaluationReport",
    "FinetuneConfig",
    "GenerateConfig",
    "GenerationResult",
    "LatentSamples",
    "ModelDecoder",
    "PopulationResult",
    "SaneGenerator",
    "TransferPlan",
    "add_isotropic_noise",
    "anchor_model_kwargs",
    "batchnorm_modules",
    "bootstrap",
    "build_model_from_state_dict",
    "classifier_layer",
    "classifier_parameter_names",
    "compare_with_baselines",
    "condition_batchnorm",
    "decode_latents",
    "embed_anchors",
    "ensemble_metrics",
    "evaluate_models",
    "evaluate_population",
    "finetune",
    "finished_generation",
    "generate",
    "generate_models",
    "has_batchnorm",
    "load_anchors",
    "nearest_anchor",
    "noise_control_models",
    "parameter_vector",
    "plan_transfer",
    "plot_accuracy_curves",
    "push_generated_models",
    "sample_diagonal_gaussian",
    "sample_gaussian",
    "sample_kde",
    "save_generated_models",
    "scratch_models",
    "select_anchor_rows",
    "subsample",
    "tokens_to_state_dict",
    "top_k",
    "weight_distances",
    "write_evaluation_report",
]
