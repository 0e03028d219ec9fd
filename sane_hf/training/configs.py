"""Run configuration of SANE pretraining (a plain dataclass, saved as `train_config.json` next to the model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args


MixedPrecision = Literal["no", "bf16", "fp16"]
MIXED_PRECISIONS = get_args(MixedPrecision)
ProjectionPooling = Literal["flatten", "mean"]
# Rows a streamed train split is shuffled through when `shuffle_buffer` is not set.
DEFAULT_SHUFFLE_BUFFER = 256


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; `SaneConfig` (the architecture) is built from the model fields.

    Args:
        dataset (`str`): a tokenized zoo (folder or Hub dataset id) written by `convert_zoo`.
        output_dir (`str`, *optional*, defaults to `"runs/sane"`): where checkpoints and the final model go.
        streaming (`bool`, *optional*, defaults to `False`): stream the dataset (`load_zoo_dataset(...,
            streaming=True)`) instead of downloading it: every process reads its own part of the stream, an epoch is
            one pass over it, and step checkpoints keep each process's stream position.
        shuffle_buffer (`int`, *optional*): rows in the shuffle buffer of the streamed train split (default
            `DEFAULT_SHUFFLE_BUFFER`; 0 keeps the stream order); only with `streaming`.
        init_from (`str`, *optional*): a pretrained SANE (folder or Hub id) to start from (fine-tuning on another
            zoo); its token size must match the dataset's.

        d_model, n_heads, n_layers, n_decoder_layers, latent_dim, window_size, halo_size, dropout,
        projection_dim, projection_pooling: the `SaneConfig` fields (docs/method.md#model).
        max_positions (`list[int]`, *optional*): position-table sizes; defaults to the dataset layout's.

        gamma (`float`, defaults to 0.05) / temperature (`float`, defaults to 0.1): loss weights (SANE §4.3).
        noise_multiplicative / noise_additive (`float`): per-view noise sigma (SANE §4.2; defaults 0.1 / 0).
        erase_probability (`float`, defaults to 0): probability of random erasing per view.
        denoise (`bool`, defaults to `False`): reconstruction target is each view's clean (permuted, un-noised,
            un-erased) window rather than its augmented input, which makes SANE a denoising autoencoder whose decoder
            maps perturbed latents back towards weights of real models (upstream reconstructs the noisy input).
        permutation_augmentation (`bool`, defaults to `True`): view 2 is a random function-preserving permutation
            (what upstream intended; its configs disabled it by accident, docs/method.md#departures-at-a-glance).
        windows_per_checkpoint (`int`, defaults to 1): windows drawn per checkpoint and epoch (upstream
            "supersample").

        epochs, max_steps, batch_size, lr, weight_decay, gradient_accumulation_steps, max_grad_norm: optimization
            (AdamW with decay on matrices only, OneCycle; SANE §4.4).
        mixed_precision (`str`, *optional*): `"no"`, `"bf16"` or `"fp16"`; unset, the launcher decides (`accelerate
            launch --mixed_precision`, `accelerate config`, else `"no"`). `trainer_state.json` records what ran.
        compile (`bool`, defaults to `False`): `torch.compile` the model (no faster on CPU: BENCHMARKS.md, levers of the training step).
        retain_freed_memory (`bool`, defaults to `True`): on Linux with glibc, keep freed memory in the process for
            reuse (`sane_hf.utils.allocation`), so that every step's large temporaries stop faulting in fresh pages
            (BENCHMARKS.md, levers of the training step); the setting stays for the rest of the process.

        seed, save_steps, resume_from_checkpoint, log_with, logging_steps, push_to_hub, hub_private, num_threads:
            run control.
    """

    dataset: str = field(default=None, metadata={"help": "Tokenized zoo: a folder or Hub dataset id (required)."})
    output_dir: str = field(default="runs/sane", metadata={"help": "Output folder for checkpoints and the model."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub dataset."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset's shards instead of downloading them (a zoo larger than the disk)."},
    )
    shuffle_buffer: int | None = field(
        default=None,
        metadata={
            "help": f"Rows in the shuffle buffer of a streamed train split (default {DEFAULT_SHUFFLE_BUFFER}; 0: "
            "stream order). Needs --streaming."
        },
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this pretrained SANE (folder or Hub id) instead of scratch."}
    )
    # Architecture (SaneConfig).
    d_model: int = field(default=64, metadata={"help": "Transformer width D."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads."})
    n_layers: int = field(default=2, metadata={"help": "Encoder blocks."})
    n_decoder_layers: int | None = field(default=None, metadata={"help": "Decoder blocks (default: n_layers)."})
    latent_dim: int = field(default=32, metadata={"help": "Per-token latent size L."})
    window_size: int = field(default=64, metadata={"help": "Training window W (tokens); clipped to the sequence."})
    halo_size: int | None = field(default=None, metadata={"help": "Halo for whole-model encoding (default W/4)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout in all blocks."})
    projection_dim: int = field(default=30, metadata={"help": "Output size of the contrastive projection head."})
    projection_pooling: ProjectionPooling = field(
        default="flatten", metadata={"help": "'flatten' (upstream head over W*L) or 'mean' (over the mean latent)."}
    )
    max_positions: list[int] | None = field(
        default=None, metadata={"help": "Position-table sizes [global, layer, row]; default from the layout."}
    )
    # Objective and augmentations.
    gamma: float = field(default=0.05, metadata={"help": "Weight of the contrastive loss (1-gamma: reconstruction)."})
    temperature: float = field(default=0.1, metadata={"help": "NT-Xent temperature."})
    noise_multiplicative: float = field(default=0.1, metadata={"help": "Sigma of x*(1+sigma*N) noise per view."})
    noise_additive: float = field(default=0.0, metadata={"help": "Sigma of x+sigma*N noise per view."})
    erase_probability: float = field(default=0.0, metadata={"help": "Probability of random erasing per view."})
    denoise: bool = field(
        default=False,
        metadata={
            "help": "Reconstruct each view's clean window from its noisy input (a denoising autoencoder) instead of "
            "the noisy input itself (upstream)."
        },
    )
    permutation_augmentation: bool = field(
        default=True, metadata={"help": "Permute view 2 with a random function-preserving permutation."}
    )
    windows_per_checkpoint: int = field(default=1, metadata={"help": "Windows per checkpoint and epoch."})
    # Optimization.
    epochs: int = field(default=30, metadata={"help": "Training epochs."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Windows per batch and process."})
    lr: float = field(default=3e-3, metadata={"help": "Peak learning rate of the OneCycle schedule."})
    weight_decay: float = field(default=3e-9, metadata={"help": "AdamW weight decay (matrices only)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip the gradient norm (on sync)."})
    mixed_precision: MixedPrecision | None = field(
        default=None,
        metadata={
            "help": "Mixed precision; unset, `accelerate launch --mixed_precision` / `accelerate config` decide "
            "(default there: 'no')."
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    retain_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On Linux (glibc), keep freed memory in the process for reuse, so every step's large temporaries "
            "do not fault in fresh pages; the process keeps its peak heap."
        },
    )
    # Run control.
    seed: int = field(default=32, metadata={"help": "Seed of initialization, data order and augmentations."})
    save_steps: int = field(default=0, metadata={"help": "Save a resumable checkpoint every N steps (0: off)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many step checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A step checkpoint folder to resume from, 'latest' (error if none), or 'auto' (the latest if "
            "any, else start from scratch: rerunning the same command continues an interrupted run)."
        },
    )
    log_with: str | None = field(default=None, metadata={"help": "Accelerate tracker: tensorboard, trackio, wandb."})
    logging_steps: int = field(default=10, metadata={"help": "Log training metrics every N steps."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the final model to this Hub repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads per process (default: torch's)."}
    )

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("`dataset` is required: a tokenized zoo folder or Hub dataset id (see convert_zoo).")
        positive = (
            "d_model",
            "n_heads",
            "n_layers",
            "latent_dim",
            "window_size",
            "projection_dim",
            "windows_per_checkpoint",
            "epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"`gamma` must be in [0, 1], got {self.gamma}.")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}.")
        for name in ("noise_multiplicative", "noise_additive", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.erase_probability <= 1.0:
            raise ValueError(f"`erase_probability` must be in [0, 1], got {self.erase_probability}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1 when set, got {self.max_steps}.")
        if self.save_steps < 0:
            raise ValueError(f"`save_steps` must be >= 0, got {self.save_steps}.")
        if self.shuffle_buffer is not None:
            if not self.streaming:
                raise ValueError(
                    f"`shuffle_buffer`={self.shuffle_buffer!r} needs `streaming`=True: an in-memory dataset is "
                    "shuffled whole every epoch; pass --streaming or drop --shuffle_buffer."
                )
            if (
                not isinstance(self.shuffle_buffer, int)
                or isinstance(self.shuffle_buffer, bool)
                or self.shuffle_buffer < 0
            ):
                raise ValueError(f"`shuffle_buffer` must be an int >= 0, got {self.shuffle_buffer!r}.")
        if self.streaming and self.windows_per_checkpoint != 1:
            raise ValueError(
                f"`windows_per_checkpoint`={self.windows_per_checkpoint} needs an in-memory dataset: a streamed split "
                "yields every checkpoint once per pass; use windows_per_checkpoint=1 with --streaming."
            )
        if self.max_positions is not None and not _three_positive_ints(self.max_positions):
            raise ValueError(
                "`max_positions` must be a list of 3 positive ints (global index, layer index, row index table "
                f"sizes), got {self.max_positions!r}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _three_positive_ints(values: object) -> bool:
    return (
        isinstance(values, list | tuple)
        and len(values) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    )
