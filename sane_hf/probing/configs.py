"""Run configuration of property prediction (`scripts/predict_properties.py`; a plain dataclass, saved with results)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..utils.checks import check_device
from ..utils.precision import PRECISIONS
from .embed import POOLINGS
from .finetune import FINETUNE_POOLINGS


FEATURE_SCALINGS = ("none", "standardize", "both")


@dataclass
class PredictConfig:
    """Predict model properties from SANE embeddings, with the W and s(W) baselines (docs/method.md#probes).

    Args:
        > Inputs and outputs

        model (`str`): a pretrained SANE, folder or Hub id (`SaneModel.from_pretrained`).
        dataset (`str`): a tokenized zoo, folder or Hub dataset id (`load_zoo_dataset`).
        dataset_revision (`str`, *optional*): revision of a Hub dataset.
        output_dir (`str`, *optional*, defaults to `"runs/predict"`): where `results.json`, `results.md` and the
            plots go.
        properties (`list[str]`, *optional*, defaults to `["test_acc", "epoch", "ggap"]`): properties to predict;
            numeric ones get the ridge probe (R²), categorical ones (strings, bools, few-valued ints) the classifier
            (accuracy). `epoch` is the checkpoint's epoch column.
        checkpoint_epochs (`list[int]`, *optional*): only use checkpoints of these training epochs (default: all).

        > Features

        poolings (`list[str]`, *optional*, defaults to `["mean", "mean+layers", "concat"]`): SANE embeddings to probe
            (`"mean"`: upstream's mean over tokens; `"layers"`, `"mean+layers"`, `"concat"`: see `embed_zoo`).
        baselines (`bool`, *optional*, defaults to `True`): also probe raw weights W and layer statistics s(W).
        include_padding (`bool`, *optional*, defaults to `False`): compute s(W) over the zero padding too (upstream's
            quirk, docs/method.md#probes).
        max_raw_features (`int`, *optional*, defaults to 100000): skip the W baseline above this many values per
            checkpoint (infeasible for ResNets, as in the paper).
        feature_scaling (`str`, *optional*, defaults to `"both"`): ridge features as upstream (`"none"`),
            standardized on train (`"standardize"`), or both reported.
        gradient_boosting (`bool`, *optional*, defaults to `True`): an extra, non-linear row: gradient boosting on
            s(W) and on the mean SANE embedding (not SANE's protocol).
        embed_permutations (`int`, *optional*, defaults to 0): also probe SANE embeddings averaged over this many
            random function-preserving permutations of each checkpoint (rows "SANE <pooling> (perm-avg)"; 0: off).
        embed_batch_size (`int`, *optional*, defaults to 64): checkpoints read and embedded per step.
        precision (`str`, *optional*, defaults to `"fp32"`): compute precision of embedding: `"fp32"`, `"bf16"`
            (autocast) or `"auto"` (bf16 only where the device has fast bf16 kernels); embeddings are float32.

        > Fine-tuning (SaneForPropertyPrediction)

        finetune_epochs (`int`, *optional*, defaults to 0): epochs of end-to-end fine-tuning (0: skip).
        finetune_lr (`float`, *optional*, defaults to 3e-4): peak encoder learning rate (head: 10x).
        finetune_batch_size (`int`, *optional*, defaults to 32): checkpoints per step.
        finetune_weight_decay (`float`, *optional*, defaults to 1e-4): AdamW weight decay.
        finetune_patience (`int`, *optional*, defaults to 3): early-stopping patience on the val loss.
        finetune_pooling (`str`, *optional*, defaults to `"mean"`): how the fine-tuned encoder pools its token latents:
            `"mean"`, or `"stats"` (per-layer mean and standard deviation, the `stats` probe's features).
        finetune_hidden_size (`int`, *optional*, defaults to 64): hidden width of the head (0: a linear head; on the
            digits zoo the 64-wide head reached a lower validation loss, 0.49 vs 0.54).
        finetune_permutations (`bool`, *optional*, defaults to `True`): augment every fine-tuning batch with random
            function-preserving permutations (needs the zoo's architecture in `meta/info.json`).

        > Run control

        plots (`bool`, *optional*, defaults to `True`): write PNG plots (needs `matplotlib`).
        update_model_card (`bool`, *optional*, defaults to `True`): when `model` is a local folder, store the results
            there (`sane_probe_results.json`) and add them to its card's `model-index` (a hand-written `README.md`
            is left alone).
        seed (`int`, *optional*, defaults to 0): seed of the classifier, gradient boosting and fine-tuning.
        num_threads (`int`, *optional*): torch CPU threads for the run, restored afterwards (default: torch's).
        device (`str`, *optional*): device of the SANE encoder (default: CUDA if available, else CPU).
    """

    model: str = field(default=None, metadata={"help": "Pretrained SANE: a folder or Hub id (required)."})
    dataset: str = field(default=None, metadata={"help": "Tokenized zoo: a folder or Hub dataset id (required)."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub dataset."})
    output_dir: str = field(default="runs/predict", metadata={"help": "Folder for results.json/results.md/plots."})
    properties: list[str] = field(
        default_factory=lambda: ["test_acc", "epoch", "ggap"],
        metadata={"help": "Properties to predict (numeric: ridge R²; categorical: classifier accuracy)."},
    )
    checkpoint_epochs: list[int] | None = field(
        default=None, metadata={"help": "Only checkpoints of these epochs (default: all)."}
    )
    poolings: list[str] = field(
        default_factory=lambda: ["mean", "mean+layers", "concat"],
        metadata={"help": f"SANE embeddings to probe, from {list(POOLINGS)}."},
    )
    baselines: bool = field(default=True, metadata={"help": "Also probe raw weights W and layer statistics s(W)."})
    include_padding: bool = field(
        default=False, metadata={"help": "Compute s(W) over the zero padding too (upstream quirk, SANE §5.4)."}
    )
    max_raw_features: int = field(
        default=100_000, metadata={"help": "Skip the W baseline above this many values per checkpoint."}
    )
    feature_scaling: str = field(
        default="both", metadata={"help": "Ridge features: 'none' (upstream), 'standardize' (train stats), 'both'."}
    )
    gradient_boosting: bool = field(
        default=True, metadata={"help": "Extra non-linear row: gradient boosting on s(W) and the SANE mean embedding."}
    )
    embed_permutations: int = field(
        default=0, metadata={"help": "Also probe embeddings averaged over N random permutations per model (0: off)."}
    )
    embed_batch_size: int = field(default=64, metadata={"help": "Checkpoints read and embedded per step."})
    precision: str = field(
        default="fp32",
        metadata={"help": "Embedding precision: 'fp32', 'bf16' (autocast) or 'auto' (bf16 where fast)."},
    )
    finetune_epochs: int = field(default=0, metadata={"help": "Epochs of end-to-end fine-tuning (0: skip)."})
    finetune_lr: float = field(default=3e-4, metadata={"help": "Peak encoder learning rate of fine-tuning."})
    finetune_batch_size: int = field(default=32, metadata={"help": "Checkpoints per fine-tuning step."})
    finetune_weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay of fine-tuning."})
    finetune_patience: int = field(default=3, metadata={"help": "Early-stopping patience (epochs) on the val loss."})
    finetune_pooling: str = field(
        default="mean",
        metadata={"help": "Pooling of the fine-tuned encoder: 'mean', or 'stats' (per-layer mean and spread)."},
    )
    finetune_hidden_size: int = field(
        default=64, metadata={"help": "Hidden width of the fine-tuning head (0: linear)."}
    )
    finetune_permutations: bool = field(
        default=True, metadata={"help": "Augment fine-tuning batches with function-preserving permutations."}
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots (needs matplotlib)."})
    update_model_card: bool = field(
        default=True, metadata={"help": "Add the probe results to the card of a local model folder (README.md)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the classifier, gradient boosting and fine-tuning."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})
    device: str | None = field(default=None, metadata={"help": "Device of the SANE encoder (default: cuda or cpu)."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("`model` is required: a pretrained SANE folder or Hub id.")
        if not self.dataset:
            raise ValueError("`dataset` is required: a tokenized zoo folder or Hub dataset id.")
        if not self.properties:
            raise ValueError("`properties` must name at least one property.")
        unknown = [p for p in self.poolings if p not in POOLINGS]
        if unknown:
            raise ValueError(f"`poolings` must be among {list(POOLINGS)}, got {unknown}.")
        if self.finetune_pooling not in FINETUNE_POOLINGS:
            raise ValueError(f"`finetune_pooling` must be one of {FINETUNE_POOLINGS}, got {self.finetune_pooling!r}.")
        if self.feature_scaling not in FEATURE_SCALINGS:
            raise ValueError(f"`feature_scaling` must be one of {FEATURE_SCALINGS}, got {self.feature_scaling!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}.")
        for name in ("embed_batch_size", "finetune_batch_size", "finetune_patience", "max_raw_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        for name in ("finetune_epochs", "finetune_hidden_size", "embed_permutations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
        if self.finetune_lr <= 0:
            raise ValueError(f"`finetune_lr` must be > 0, got {self.finetune_lr}.")
        check_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["PredictConfig"]
