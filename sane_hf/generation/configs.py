"""Run configurations of model generation and of the evaluation of generated models (plain dataclasses).

`GenerateConfig` drives `sane-generate` / `scripts/generate.py`, `EvaluateConfig` drives `sane-evaluate` /
`scripts/evaluate.py`. Both are saved as JSON next to their outputs and every field
carries its `--help` text (rule 5).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from ..utils.precision import PRECISIONS


# Choice fields are `Literal`s so that `--help` lists the choices; the tuples serve the checks.
Sampler = Literal["kde", "subsample", "bootstrap", "diagonal_gaussian"]
SAMPLERS = get_args(Sampler)
# Old sampler names, still accepted with a FutureWarning. `gaussian` was named after the paper's SANE_GAUSS, which
# it is not (that one bootstraps from a Gaussian prior over the anchor embeddings; this one samples once).
DEPRECATED_SAMPLERS = {"gaussian": "diagonal_gaussian"}
# "token": one anchor per sample, noise independent per sample, token and dimension (the fix of docs/method.md#samplers).
# "original_token" / "original_individual": the original's semantics (one anchor per sample, noise shared by every
# token / by every entry); "mixed": a true per-token KDE whose tokens may come from different anchors.
KdeMode = Literal["token", "original_token", "original_individual", "mixed", "anchor_covariance"]
KDE_MODES = get_args(KdeMode)
TaskSplit = Literal["train", "val"]
SCORE_SPLITS = BN_SPLITS = get_args(TaskSplit)
ScratchArchitecture = Literal["generated", "anchors"]
SCRATCH_ARCHITECTURES = get_args(ScratchArchitecture)
BootstrapPool = Literal["last", "all"]
BOOTSTRAP_POOLS = get_args(BootstrapPool)
Precision = Literal["auto", "fp32", "bf16"]  # the choices of sane_hf.utils.precision.PRECISIONS
FinetuneOptimizer = Literal["sgd", "adam", "adamw"]
FINETUNE_OPTIMIZERS = get_args(FinetuneOptimizer)


def _parse_json_mapping(owner: str, name: str, value: Any) -> dict | None:
    """Accept a mapping, a JSON object string (command line) or `None`."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{owner}: `{name}` must be a JSON object, got {value!r} ({error}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{owner}: `{name}` must be a mapping (a JSON object on the command line), got {value!r}.")
    return dict(value)


def _check_int(owner: str, name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{owner}: `{name}` must be an int >= {minimum}{' or None' if optional else ''}, got {value!r}."
        )


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {list(choices)}, got {value!r}.")


def _check_positive_float(owner: str, name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{owner}: `{name}` must be a finite float {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


@dataclass
class FinetuneConfig:
    """How generated models and their baselines are fine-tuned and compared (docs/method.md#evaluation).

    Every population (generated models, models trained from scratch, the anchors, the noise control) gets exactly
    this schedule, so the curves are comparable.

    Args:
        finetune_epochs (`int`, *optional*, defaults to 5):
            Fine-tuning epochs; accuracy is recorded at epoch 0 (zero-shot) and after every epoch. 0 evaluates
            zero-shot only.
        finetune_optimizer (`str`, *optional*, defaults to `"adam"`):
            `"sgd"`, `"adam"` or `"adamw"` (`sane_hf.tasks.make_optimizer`).
        finetune_lr (`float`, *optional*, defaults to 1e-3):
            Learning rate (constant) of every population.
        finetune_lr_grid (`list[float]`, *optional*):
            Learning rates to try instead of `finetune_lr`: each population is reported at the rate with its best
            mean validation accuracy after the last epoch (so scratch training is compared at its own best rate).
        finetune_weight_decay (`float`, *optional*, defaults to 0.0):
            Weight decay.
        finetune_batch_size (`int`, *optional*, defaults to 32):
            Mini-batch size.
        num_scratch (`int`, *optional*):
            Models trained from scratch; defaults to the number of generated models.
        scratch_architecture (`str`, *optional*, defaults to `"generated"`):
            Constructor arguments of the scratch models: `"generated"` (model `r` is built like generated model `r`,
            e.g. with its activation and dropout) or `"anchors"` (model `r` like anchor `r`, the best zoo members
            first). With per-member activations the two can differ a lot: sigmoid networks train slowly from scratch.
        noise_control (`bool`, *optional*, defaults to `True`):
            Evaluate the memorization control: every generated model's nearest anchor plus isotropic Gaussian noise
            at the same weight-space distance.
        ensemble (`bool`, *optional*, defaults to `True`):
            Also report the accuracy of the logit-averaged ensemble of each population.
        eval_seed (`int`, *optional*, defaults to 0):
            Seed of the fine-tuning batch orders, scratch initializations and noise directions.
    """

    finetune_epochs: int = field(
        default=5, metadata={"help": "Fine-tuning epochs (accuracy after each; 0 = zero-shot only)."}
    )
    finetune_optimizer: FinetuneOptimizer = field(
        default="adam", metadata={"help": f"Fine-tuning optimizer, one of {list(FINETUNE_OPTIMIZERS)}."}
    )
    finetune_lr: float = field(
        default=1e-3, metadata={"help": "Constant fine-tuning learning rate (all populations)."}
    )
    finetune_lr_grid: list[float] | None = field(
        default=None,
        metadata={"help": "Learning rates to try; each population is reported at its best (validation) rate."},
    )
    finetune_weight_decay: float = field(default=0.0, metadata={"help": "Fine-tuning weight decay."})
    finetune_batch_size: int = field(default=32, metadata={"help": "Fine-tuning mini-batch size."})
    num_scratch: int | None = field(
        default=None, metadata={"help": "Models trained from scratch (default: as many as generated models)."}
    )
    scratch_architecture: ScratchArchitecture = field(
        default="generated",
        metadata={"help": "Scratch models built like the 'generated' models or like the 'anchors' (best first)."},
    )
    noise_control: bool = field(
        default=True,
        metadata={"help": "Evaluate nearest anchor + isotropic noise at the generated models' weight distance."},
    )
    ensemble: bool = field(default=True, metadata={"help": "Report the logit-averaged ensemble of each population."})
    eval_seed: int = field(
        default=0, metadata={"help": "Seed of fine-tuning batch orders, scratch inits and noise directions."}
    )

    def _check_finetune(self) -> None:
        owner = type(self).__name__
        _check_int(owner, "finetune_epochs", self.finetune_epochs, 0)
        _check_choice(owner, "finetune_optimizer", self.finetune_optimizer, FINETUNE_OPTIMIZERS)
        _check_positive_float(owner, "finetune_lr", self.finetune_lr)
        if self.finetune_lr_grid is not None:
            if isinstance(self.finetune_lr_grid, int | float):
                self.finetune_lr_grid = [self.finetune_lr_grid]
            self.finetune_lr_grid = [float(lr) for lr in self.finetune_lr_grid] or None
            for lr in self.finetune_lr_grid or []:
                _check_positive_float(owner, "finetune_lr_grid", lr)
        _check_positive_float(owner, "finetune_weight_decay", self.finetune_weight_decay, allow_zero=True)
        _check_int(owner, "finetune_batch_size", self.finetune_batch_size, 1)
        _check_int(owner, "num_scratch", self.num_scratch, 0, optional=True)
        _check_choice(owner, "scratch_architecture", self.scratch_architecture, SCRATCH_ARCHITECTURES)
        _check_int(owner, "eval_seed", self.eval_seed, 0)


@dataclass
class GenerateConfig(FinetuneConfig):
    """Options of `sane-generate` (`scripts/generate.py`): sample models from a pretrained SANE (docs/method.md#samplers).

    Args:
        > Inputs and outputs

        model (`str`):
            Pretrained SANE: a folder or Hub model id (with its weight processor, `preprocessor_config.json`).
        dataset (`str`):
            The tokenized zoo the anchors come from (folder or Hub dataset id, `sane_hf.data.load_zoo_dataset`).
        output_dir (`str`, *optional*, defaults to `"runs/generated"`):
            Where `model_000/`, ... (each `config.json` + `model.safetensors` + `README.md`), `generation.json` and
            the evaluation report go.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing non-empty `output_dir`.
        push_to_hub (`str`, *optional*):
            Push the output folder as ONE Hub model repo (`org/name`) with subfolders `model_000/`, ...
        hub_private (`bool`, *optional*, defaults to `False`):
            Create that repo as private.
        base_model (`str`, *optional*):
            Hub id of the source SANE written as `base_model` in the cards; defaults to `model` when it is not a
            local folder.

        > Anchors (docs/method.md#samplers)

        anchor_split (`str`, *optional*, defaults to `"train"`):
            Split of the zoo the anchors come from.
        num_anchors (`int`, *optional*, defaults to 10):
            Number of anchor models: the best `num_anchors` models by `anchor_property`.
        anchor_property (`str`, *optional*, defaults to `"val_acc"`):
            Property ranking the anchors (largest first). Validation accuracy by default: generated models and anchors
            are reported on the test split, so choosing the anchors on it would select on the data they are judged
            by. Zoos without a validation metric (e.g. the original model zoos) name another column.
        anchor_epoch (`int`, *optional*):
            Epoch of the anchor checkpoints; defaults to the last epoch of the split.
        anchor_filter (`dict`, *optional*):
            Property values the anchors must have, e.g. `{"activation": "relu"}` (a JSON object on the command line).

        > Sampling (docs/method.md#samplers)

        sampler (`str`, *optional*, defaults to `"subsample"`):
            `"kde"` (SANE_KDE), `"subsample"` (SANE_SUB: draw `num_candidates`, keep the best `n`), `"bootstrap"`
            (SANE_BOOT) or `"diagonal_gaussian"` (one Gaussian per token and latent dimension fitted on the anchors'
            latents, sampled once: not the paper's SANE_GAUSS, which bootstraps from such a prior). The old name
            `"gaussian"` still works, with a FutureWarning.
        n (`int`, *optional*, defaults to 10):
            Number of generated models.
        kde_mode (`str`, *optional*, defaults to `"token"`):
            One of `"token"` (independent noise per sample and token), `"original_token"`,
            `"original_individual"` (the original's correlated noise) and `"mixed"` (tokens from different
            anchors).
        bandwidth (`float`, *optional*, defaults to 0.01):
            KDE bandwidth `h` in latent space, in the latents' own units. Its best value depends on the SANE: for
            the quickstart's digits SANE, docs/quality_study.md measures zero-shot accuracy and the lead over the
            noise control from `h = 0.01` to `h = 1` (the quickstart uses 0.3).
        num_candidates (`int`, *optional*, defaults to 100):
            Subsampling: candidates drawn and scored before the best `n` are kept.
        bootstrap_iterations (`int`, *optional*, defaults to 3):
            Bootstrapping: rounds of sample → score → refit.
        bootstrap_samples (`int`, *optional*, defaults to 50):
            Bootstrapping: candidates per round.
        bootstrap_keep (`int`, *optional*, defaults to 10):
            Bootstrapping: best candidates of a round that become the next round's anchors.
        bootstrap_pool (`str`, *optional*, defaults to `"last"`):
            Bootstrapping: final models are the true top `n` of the `"last"` round or of `"all"` rounds.
        score_split (`str`, *optional*, defaults to `"val"`):
            Task split that scores candidates (`"train"` or `"val"`; never the test split).
        score_max_samples (`int`, *optional*):
            Score on at most this many images of `score_split` (cheaper); default all.
        seed (`int`, *optional*, defaults to 0):
            Seed of the sampling generator.
        decode_batch_size (`int`, *optional*):
            Haloed windows per SANE forward pass; default: the model's (64 on accelerators, ~8 MB of activations
            per pass on CPU, see `SaneModel.haloed_encode`).
        precision (`str`, *optional*, defaults to `"fp32"`):
            Compute precision of embedding the anchors and decoding samples: `"fp32"`, `"bf16"` (autocast) or
            `"auto"` (bf16 only where the device has fast bf16 kernels, `sane_hf.utils.precision`). Latents and
            tokens are float32 either way.

        > Target architecture (docs/method.md#samplers)

        task (`str`, *optional*):
            Task of the generated models (`sane_hf.tasks.load_task`); defaults to the zoo's task.
        task_seed (`int`, *optional*):
            Seed of the task split; defaults to the zoo's.
        num_classes (`int`, *optional*):
            Output classes of the generated models; a value other than the zoo's needs `reset_classifier`.
        reset_classifier (`bool`, *optional*, defaults to `False`):
            Re-initialize the final Linear layer (e.g. for a task with another class count).
        target_model_kwargs (`dict`, *optional*):
            Extra constructor arguments of the generated architecture (JSON object).

        > BatchNorm conditioning (docs/method.md#batchnorm-conditioning)

        bn_condition (`bool`, *optional*, defaults to `True`):
            Re-estimate BatchNorm running statistics on task images (a no-op without BatchNorm).
        bn_split (`str`, *optional*, defaults to `"train"`):
            Task split for the conditioning passes (`"train"` or `"val"`).
        bn_iterations (`int`, *optional*, defaults to 20):
            Forward passes (mini-batches) of the conditioning.
        bn_batch_size (`int`, *optional*, defaults to 64):
            Images per conditioning pass.

        > Evaluation (docs/method.md#evaluation): the `FinetuneConfig` fields, plus

        evaluate (`bool`, *optional*, defaults to `True`):
            Fine-tune and compare the generated models after generating them.
        evaluate_reconstructions (`bool`, *optional*, defaults to `True`):
            Also evaluate the anchors encoded and decoded without noise (the decoding error alone).
        plot (`bool`, *optional*, defaults to `True`):
            Write `evaluation.png` (needs matplotlib).
        num_threads (`int`, *optional*):
            `torch.set_num_threads` for the run (restored afterwards); default torch's.
    """

    model: str | None = field(default=None, metadata={"help": "Pretrained SANE: folder or Hub model id (required)."})
    dataset: str | None = field(
        default=None, metadata={"help": "Tokenized zoo the anchors come from: folder or Hub dataset id (required)."}
    )
    output_dir: str = field(default="runs/generated", metadata={"help": "Output folder (model_000/, ..., reports)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output_dir."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Push the output as ONE Hub repo (org/name) with model_000/, ... subfolders."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the source SANE for the cards (default: --model if not a folder)."}
    )
    # Anchors.
    anchor_split: str = field(default="train", metadata={"help": "Zoo split the anchors come from."})
    num_anchors: int = field(default=10, metadata={"help": "Number of anchors: the best models by anchor_property."})
    anchor_property: str = field(
        default="val_acc",
        metadata={"help": "Property ranking the anchors (largest first); never the split results are reported on."},
    )
    anchor_epoch: int | None = field(
        default=None, metadata={"help": "Epoch of the anchor checkpoints (default: the split's last epoch)."}
    )
    anchor_filter: dict | str | None = field(
        default=None, metadata={"help": 'Required anchor property values as JSON, e.g. \'{"activation": "relu"}\'.'}
    )
    # Sampling.
    # The deprecated name stays parseable (a FutureWarning maps it, see __post_init__).
    sampler: Literal[Sampler, "gaussian"] = field(
        default="subsample", metadata={"help": f"Sampler, one of {list(SAMPLERS)} ('gaussian': deprecated)."}
    )
    n: int = field(default=10, metadata={"help": "Number of generated models."})
    kde_mode: KdeMode = field(default="token", metadata={"help": f"KDE noise semantics, one of {list(KDE_MODES)}."})
    bandwidth: float = field(
        default=0.01,
        metadata={
            "help": "KDE bandwidth h in latent units (digits SANE, latent std 0.2: 0.01 best, 0.05 halves acc)."
        },
    )
    num_candidates: int = field(default=100, metadata={"help": "Subsampling: candidates scored to keep the best n."})
    bootstrap_iterations: int = field(default=3, metadata={"help": "Bootstrapping: sample/score/refit rounds."})
    bootstrap_samples: int = field(default=50, metadata={"help": "Bootstrapping: candidates per round."})
    bootstrap_keep: int = field(default=10, metadata={"help": "Bootstrapping: best candidates refit as anchors."})
    bootstrap_pool: BootstrapPool = field(
        default="last", metadata={"help": "Bootstrapping: top n from the 'last' round or 'all' rounds."}
    )
    score_split: TaskSplit = field(
        default="val", metadata={"help": "Task split scoring candidates: train or val (never test)."}
    )
    score_max_samples: int | None = field(
        default=None, metadata={"help": "Score on at most this many images (default: the whole split)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling generator."})
    precision: Precision = field(
        default="fp32", metadata={"help": "Embedding/decoding precision: 'fp32', 'bf16' or 'auto' (bf16 where fast)."}
    )
    decode_batch_size: int | None = field(
        default=None, metadata={"help": "Haloed windows per SANE forward pass (default: the model's, device-aware)."}
    )
    # Target.
    task: str | None = field(default=None, metadata={"help": "Task of the generated models (default: the zoo's)."})
    task_seed: int | None = field(default=None, metadata={"help": "Seed of the task split (default: the zoo's)."})
    num_classes: int | None = field(
        default=None, metadata={"help": "Classes of the generated models; another count needs --reset_classifier."}
    )
    reset_classifier: bool = field(default=False, metadata={"help": "Re-initialize the final Linear layer."})
    target_model_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra constructor arguments of the generated architecture (JSON object)."}
    )
    # BatchNorm conditioning.
    bn_condition: bool = field(
        default=True, metadata={"help": "Re-estimate BatchNorm running statistics (no-op without BatchNorm)."}
    )
    bn_split: TaskSplit = field(
        default="train", metadata={"help": "Task split of the conditioning passes: train or val."}
    )
    bn_iterations: int = field(default=20, metadata={"help": "Forward passes of the BatchNorm conditioning."})
    bn_batch_size: int = field(default=64, metadata={"help": "Images per BatchNorm conditioning pass."})
    # Evaluation and run control.
    evaluate: bool = field(default=True, metadata={"help": "Fine-tune and compare the generated models."})
    evaluate_reconstructions: bool = field(
        default=True, metadata={"help": "Also evaluate the anchors encoded + decoded without noise (decoding error)."}
    )
    plot: bool = field(default=True, metadata={"help": "Write evaluation.png (needs matplotlib)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})

    def __post_init__(self):
        owner = type(self).__name__
        if not self.model:
            raise ValueError(f"{owner}: `model` is required: a pretrained SANE folder or Hub model id.")
        if not self.dataset:
            raise ValueError(f"{owner}: `dataset` is required: the tokenized zoo the anchors come from.")
        self.anchor_filter = _parse_json_mapping(owner, "anchor_filter", self.anchor_filter)
        self.target_model_kwargs = _parse_json_mapping(owner, "target_model_kwargs", self.target_model_kwargs)
        if self.sampler in DEPRECATED_SAMPLERS:
            new_name = DEPRECATED_SAMPLERS[self.sampler]
            warnings.warn(
                f"{owner}: sampler {self.sampler!r} is deprecated, use {new_name!r} (the same sampler; it is not the "
                "paper's SANE_GAUSS).",
                FutureWarning,
                stacklevel=3,
            )
            self.sampler = new_name
        _check_choice(owner, "sampler", self.sampler, SAMPLERS)
        _check_choice(owner, "kde_mode", self.kde_mode, KDE_MODES)
        _check_choice(owner, "score_split", self.score_split, SCORE_SPLITS)
        _check_choice(owner, "bn_split", self.bn_split, BN_SPLITS)
        _check_choice(owner, "bootstrap_pool", self.bootstrap_pool, BOOTSTRAP_POOLS)
        for name in (
            "n",
            "num_anchors",
            "num_candidates",
            "bootstrap_iterations",
            "bootstrap_samples",
            "bootstrap_keep",
            "bn_iterations",
            "bn_batch_size",
        ):
            _check_int(owner, name, getattr(self, name), 1)
        _check_int(owner, "seed", self.seed, 0)
        _check_int(owner, "decode_batch_size", self.decode_batch_size, 1, optional=True)
        _check_choice(owner, "precision", self.precision, PRECISIONS)
        _check_int(owner, "anchor_epoch", self.anchor_epoch, 0, optional=True)
        _check_int(owner, "score_max_samples", self.score_max_samples, 1, optional=True)
        _check_int(owner, "task_seed", self.task_seed, 0, optional=True)
        _check_int(owner, "num_classes", self.num_classes, 1, optional=True)
        _check_int(owner, "num_threads", self.num_threads, 0, optional=True)
        _check_positive_float(owner, "bandwidth", self.bandwidth, allow_zero=True)
        if self.sampler == "subsample" and self.num_candidates < self.n:
            raise ValueError(
                f"{owner}: subsampling keeps the best `n`={self.n} of `num_candidates`={self.num_candidates} "
                "candidates; `num_candidates` must be >= `n`."
            )
        if self.sampler == "bootstrap":
            if self.bootstrap_samples < self.n and self.bootstrap_pool == "last":
                raise ValueError(
                    f"{owner}: `bootstrap_samples`={self.bootstrap_samples} < `n`={self.n}; the last round cannot "
                    "provide n models (raise bootstrap_samples or use --bootstrap_pool all)."
                )
            if self.bootstrap_keep > self.bootstrap_samples:
                raise ValueError(
                    f"{owner}: `bootstrap_keep`={self.bootstrap_keep} must be <= `bootstrap_samples`="
                    f"{self.bootstrap_samples}."
                )
        self._check_finetune()

    def to_dict(self) -> dict[str, Any]:
        """`asdict(self)` (JSON-serializable), as written to `generation.json`."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class EvaluateConfig(FinetuneConfig):
    """Options of `sane-evaluate` (`scripts/evaluate.py`): fine-tune and compare saved generated models.

    Args:
        models (`str`):
            A folder of generated models (`model_000/`, ... as written by `sane-generate`), or one model folder.
        anchors (`str`, *optional*):
            A folder of anchor models (`anchor_000/`, ...) to compare with; defaults to `<models>/anchors` when it
            exists.
        task (`str`, *optional*):
            Task to evaluate on (`sane_hf.tasks.load_task`); defaults to the one in `<models>/generation.json`.
        task_seed (`int`, *optional*):
            Seed of the task split; defaults to the one in `<models>/generation.json`, else 0.
        output_dir (`str`, *optional*):
            Where `evaluation.{json,md,png}` go; defaults to `models`.
        bn_condition (`bool`, *optional*, defaults to `True`), bn_split, bn_iterations, bn_batch_size:
            BatchNorm conditioning of the noise-control and scratch models (docs/method.md#batchnorm-conditioning).
        plot (`bool`, *optional*, defaults to `True`):
            Write `evaluation.png`.
        num_threads (`int`, *optional*):
            `torch.set_num_threads` for the run (restored afterwards); default torch's.
        The `FinetuneConfig` fields set the fine-tuning schedule.
    """

    models: str | None = field(default=None, metadata={"help": "Folder of generated models (model_000/, ...)."})
    anchors: str | None = field(
        default=None, metadata={"help": "Folder of anchor models (default: <models>/anchors if it exists)."}
    )
    task: str | None = field(default=None, metadata={"help": "Task (default: from <models>/generation.json)."})
    task_seed: int | None = field(default=None, metadata={"help": "Task split seed (default: from generation.json)."})
    output_dir: str | None = field(default=None, metadata={"help": "Folder for the reports (default: --models)."})
    bn_condition: bool = field(default=True, metadata={"help": "BatchNorm-condition noise-control/scratch models."})
    bn_split: TaskSplit = field(
        default="train", metadata={"help": "Task split of the conditioning passes: train or val."}
    )
    bn_iterations: int = field(default=20, metadata={"help": "Forward passes of the BatchNorm conditioning."})
    bn_batch_size: int = field(default=64, metadata={"help": "Images per BatchNorm conditioning pass."})
    plot: bool = field(default=True, metadata={"help": "Write evaluation.png (needs matplotlib)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})

    def __post_init__(self):
        owner = type(self).__name__
        if not self.models:
            raise ValueError(f"{owner}: `models` is required: a folder of generated models.")
        _check_choice(owner, "bn_split", self.bn_split, BN_SPLITS)
        _check_int(owner, "bn_iterations", self.bn_iterations, 1)
        _check_int(owner, "bn_batch_size", self.bn_batch_size, 1)
        _check_int(owner, "task_seed", self.task_seed, 0, optional=True)
        _check_int(owner, "num_threads", self.num_threads, 0, optional=True)
        self._check_finetune()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))
