"""Generate networks with a pretrained SANE: anchors → sampling → decoding → BN conditioning → evaluation → Hub.

The whole of docs/method.md#samplers behind one call, `generate(GenerateConfig(...))` (`sane-generate`):

1. Load the SANE (`SaneModel.from_pretrained`, and its weight processor: layout and normalization) and the
   tokenized zoo; choose anchors (best models by a property at one epoch) and embed them with haloed windows.
2. Sample latents with the chosen sampler (`samplers.py`): KDE, subsampling (draw `num_candidates`, keep the best `n`
   by accuracy on train/validation images), bootstrapping, or a diagonal Gaussian.
3. Decode them (`decode.py`), rebuild each network with its anchor's architecture arguments, load strictly, and
   condition BatchNorm statistics (`bn_conditioning.py`).
4. Optionally fine-tune and compare with scratch, fine-tuned anchors and the noise control (`evaluate.py`).
5. Save each network with its zoo class's `save_pretrained` into `<output_dir>/model_000/`, ... with a card rendered
   from `sane_hf/hub/templates/generated_model_card.md`, and optionally push the folder as ONE Hub repo
   (`saving.py`).

One repo with subfolders (rather than one repo per network) because the networks of a run are one artifact: they
share a SANE, anchors, a sampler and an evaluation, and are compared and ensembled together; one repo keeps the
`generation.json` and the evaluation report next to them and costs one commit. Each subfolder is a complete
`PyTorchModelHubMixin` folder (`config.json` + `model.safetensors` + `README.md`) that `load_zoo_model` reads.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.hub_dataset import load_zoo_dataset
from ..models.sane import load_sane_folder
from ..tasks import TASK_SPLITS, evaluate_split, load_task
from ..tokenization.memory import check_fits_in_memory
from ..tokenization.normalization import token_transform_for
from ..tokenization.processing_sane import load_sane_processor
from ..utils.checks import check_finite_weights
from ..utils.io import check_output_apart_from_inputs, output_lock
from ..utils.precision import precision_autocast, resolve_precision
from ..utils.processes import Processes
from ..utils.repo_ids import load_local_or_hub
from ..utils.threads import torch_threads
from .bn_conditioning import condition_batchnorm, has_batchnorm
from .configs import GenerateConfig
from .decode import ModelDecoder
from .evaluate import (
    add_isotropic_noise,
    classifier_parameter_names,
    compare_with_baselines,
    weight_distances,
)
from .samplers import (
    LatentSamples,
    bootstrap,
    embed_anchors,
    load_anchors,
    sample_diagonal_gaussian,
    sample_kde,
    subsample,
)
from .saving import GENERATION_JSON, GenerationResult, push_generated_models, save_generated_models


logger = logging.getLogger(__name__)

# Candidates decoded, built and scored at once while subsampling/bootstrapping (bounds memory for large networks).
_SCORE_CHUNK = 64


class SaneGenerator:
    """Sampling, decoding and BN conditioning of networks from one SANE and one anchor set (docs/method.md#samplers).

    Args:
        sane (`SaneModel`): the pretrained SANE.
        zoo (`SaneZooDataset`): the tokenized zoo (anchors, layout, normalization, architecture).
        config (`GenerateConfig`): sampler, anchors, target and conditioning settings.
        task (`TaskData`, *optional*): the task; by default `config.task` or the zoo's task.
        processor (`SaneProcessor`, *optional*): the SANE's weight processor; its layout must be the zoo's, and its
            normalization (when it differs from the zoo's) encodes the anchors and decodes the samples.

    Example:

    ```python
    >>> generator = SaneGenerator(sane, zoo, GenerateConfig(model="runs/sane", dataset="runs/zoo_ds"))
    >>> samples, history = generator.sample(torch.Generator().manual_seed(0))
    >>> models = generator.build(samples)
    ```
    """

    def __init__(
        self, sane: Any, zoo: Any, config: GenerateConfig, task: Any | None = None, processor: Any | None = None
    ):

        self.sane = sane.eval()
        self.zoo = zoo
        self.config = config
        # Under a launch, every process samples the same latents and builds and scores its share of the networks.
        self.processes = Processes.current(cpu=next(sane.parameters()).device.type == "cpu")
        self.layout = zoo.layout
        sane_layout = processor.layout if processor is not None else None
        if sane_layout is not None and sane_layout != zoo.layout:
            differences = [
                f"{name} {getattr(sane_layout, name)} vs {getattr(zoo.layout, name)}"
                for name in ("token_size", "num_tokens", "num_layers")
                if getattr(sane_layout, name) != getattr(zoo.layout, name)
            ]
            raise ValueError(
                f"The SANE {config.model} was trained on another token layout (its weight processor's) than the zoo "
                f"{config.dataset} uses (meta/layout.json): {', '.join(differences) or 'same sizes, other layers'}; "
                "anchors must come from a zoo tokenized like the SANE's training data."
            )
        if task is None:
            source_task = (zoo.info.source or {}).get("task") or {}
            name = config.task or (source_task.get("name") if isinstance(source_task, dict) else source_task)
            if not name:
                raise ValueError(f"The zoo {config.dataset} does not record its task; pass --task (e.g. digits).")
            seed = (
                config.task_seed
                if config.task_seed is not None
                else (source_task.get("seed", 0) if isinstance(source_task, dict) else 0)
            )
            task = load_task(name, seed=seed)
        self.task = task
        self.architecture = zoo.info.architecture
        self.anchors = load_anchors(
            zoo,
            split=config.anchor_split,
            num_anchors=config.num_anchors,
            property_name=config.anchor_property,
            epoch=config.anchor_epoch,
            filters=config.anchor_filter,
        )
        # Anchors are encoded, and samples decoded, in ONE normalization: the SANE's own when it ships one and the
        # zoo's differs (another zoo of the same layout), else the zoo's; mixing the two rescales every weight.
        to_sane_tokens = token_transform_for(processor, zoo)
        if to_sane_tokens is not None:
            self.anchors.tokens = to_sane_tokens(self.anchors.tokens)
            self.normalization = processor.normalization
        else:
            self.normalization = zoo.normalization if zoo.info.tokens_normalized else None
        device = next(sane.parameters()).device
        precision = resolve_precision(config.precision, device, "anchor embedding and decoding")
        with precision_autocast(precision, device):
            embed_anchors(sane, self.anchors, self.layout.positions, batch_size=config.decode_batch_size)
        target_kwargs = dict(config.target_model_kwargs or {})
        if config.num_classes is not None:
            target_kwargs["num_classes"] = config.num_classes
        self.decoder = ModelDecoder(
            sane,
            self.layout,
            self.normalization,
            self.architecture,
            self.anchors.model_kwargs,
            target_model_kwargs=target_kwargs,
            reset_classifier=config.reset_classifier,
            batch_size=config.decode_batch_size,
            precision=precision,
            init_seed=config.seed * 100_003,
        )
        score_images, score_labels = task.split(config.score_split)
        if config.score_max_samples is not None:
            score_images, score_labels = (
                score_images[: config.score_max_samples],
                score_labels[: config.score_max_samples],
            )
        self.score_data = (score_images, score_labels)
        # While subsampling: (distances, nearest anchor) of every scored candidate, for the selected noise control.
        self._candidate_log: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.candidate_distances: tuple[torch.Tensor, torch.Tensor] | None = None
        self._anchor_networks: list[nn.Module] | None = None
        self.bn_images = task.split(config.bn_split).images
        logger.info(
            "Anchors: %d %s models of %r (epoch %s, %s %.4f-%.4f).",
            len(self.anchors),
            self.architecture,
            config.anchor_split,
            sorted(set(self.anchors.epochs)),
            config.anchor_property,
            min(self.anchors.values),
            max(self.anchors.values),
        )

    # ---------------------------------------------------------------------------------------------------- networks
    def condition(self, model: nn.Module) -> nn.Module:
        """BN conditioning on `config.bn_split` images (docs/method.md#batchnorm-conditioning); the batch order is fixed per call."""
        if not self.config.bn_condition or not has_batchnorm(model):
            return model
        generator = torch.Generator().manual_seed(self.config.seed)
        return condition_batchnorm(
            model, self.bn_images, self.config.bn_iterations, self.config.bn_batch_size, generator=generator
        )

    def build(self, samples: LatentSamples) -> list[nn.Module]:
        """Decode, rebuild and BN-condition the networks of `samples` (the same sample always gives the same network).

        Under a launch each process builds its share and every process gets all networks, the same as one process's.
        """
        models = []
        for start in range(0, len(samples), _SCORE_CHUNK):
            chunk = samples.select(range(start, min(start + _SCORE_CHUNK, len(samples))))
            models.extend(self.processes.gather(self._build_share(chunk)))
        return models

    def _build_share(self, chunk: LatentSamples) -> list[nn.Module]:
        """This process's share of the networks of `chunk` (all of them in one process)."""
        share = self.processes.share(len(chunk))
        if not share:
            return []
        # The decoder runs the forward passes of the whole chunk for these rows: bit-identical networks.
        rows = None if len(share) == len(chunk) else (share.start, share.stop)
        models = self.decoder(chunk.latents, chunk.anchor_index, sequences=rows)
        return [self.condition(model) for model in models]

    def build_from_tokens(self, tokens: torch.Tensor, anchor_index: torch.Tensor) -> list[nn.Module]:
        """Networks from zoo tokens (no SANE involved), e.g. the anchors themselves, BN statistics kept as stored."""
        return self.decoder.build(tokens, anchor_index)

    def anchor_models(self) -> list[nn.Module]:
        """The anchors as networks of the target architecture: their real zoo weights and BatchNorm statistics (a
        reset classifier is fresh), the baseline of fine-tuning pretrained models (the paper's fine-tuning comparison)."""
        return self.build_from_tokens(self.anchors.tokens, torch.arange(len(self.anchors)))

    def reconstructed_anchors(self) -> list[nn.Module]:
        """The anchors encoded and decoded without noise (KDE with bandwidth 0): the decoding error alone."""
        samples = LatentSamples(latents=self.anchors.latents, anchor_index=torch.arange(len(self.anchors)))
        return self.build(samples)

    def score(self, samples: LatentSamples) -> torch.Tensor:
        """Accuracy of each sample's network on the score split (train or validation images, never test)."""
        images, labels = self.score_data
        scores = []
        for start in range(0, len(samples), _SCORE_CHUNK):
            chunk = samples.select(range(start, min(start + _SCORE_CHUNK, len(samples))))
            # Built one chunk at a time and dropped after scoring: only the kept samples are rebuilt at the end.
            # Under a launch each process builds and scores its share; scores and distances are gathered.
            models = self._build_share(chunk)
            own: list[tuple[float, float, int]] = []
            if models:
                accuracies = [evaluate_split(model, images, labels)["acc"] for model in models]
                distances = nearest = torch.zeros(len(models))
                if self._candidate_log is not None:
                    if self._anchor_networks is None:
                        self._anchor_networks = self.anchor_models()
                    exclude = self.distance_exclude(models[0])
                    distances, nearest = weight_distances(models, self._anchor_networks, exclude)
                own = list(zip(accuracies, distances.tolist(), nearest.tolist()))
            rows = self.processes.gather(own)
            scores.extend(row[0] for row in rows)
            if self._candidate_log is not None:
                self._candidate_log.append(
                    (
                        torch.tensor([row[1] for row in rows], dtype=torch.float64),
                        torch.tensor([row[2] for row in rows], dtype=torch.long),
                    )
                )
        return torch.tensor(scores, dtype=torch.float64)

    # ---------------------------------------------------------------------------------------------------- sampling
    def sample(self, generator: torch.Generator | None = None) -> tuple[LatentSamples, list[dict] | None]:
        """Draw the final `config.n` latent samples with `config.sampler` (seeded by `generator`).

        Returns:
            `(samples, bootstrap_history)`; samples are best first for the scoring samplers.
        """
        config = self.config
        anchors = self.anchors.latents
        if config.sampler == "kde":
            return sample_kde(anchors, config.n, config.bandwidth, mode=config.kde_mode, generator=generator), None
        if config.sampler == "diagonal_gaussian":
            return sample_diagonal_gaussian(anchors, config.n, generator=generator), None
        if config.sampler == "subsample":
            candidates = sample_kde(
                anchors, config.num_candidates, config.bandwidth, mode=config.kde_mode, generator=generator
            )
            self._candidate_log = []
            try:
                kept = subsample(candidates, self.score, config.n)
                self.candidate_distances = (
                    torch.cat([d for d, _ in self._candidate_log]),
                    torch.cat([n for _, n in self._candidate_log]),
                )
            finally:
                self._candidate_log = None
            return kept, None
        result = bootstrap(
            anchors,
            self.score,
            num_models=config.n,
            iterations=config.bootstrap_iterations,
            samples_per_iteration=config.bootstrap_samples,
            keep_top=config.bootstrap_keep,
            bandwidth=config.bandwidth,
            mode=config.kde_mode,
            generator=generator,
            pool=config.bootstrap_pool,
        )
        return result.samples, result.history

    def distance_exclude(self, model: nn.Module) -> list[str]:
        """Parameters left out of weight-space distances: a re-initialized classifier."""
        return classifier_parameter_names(model) if self.config.reset_classifier else []


def selected_noise_controls(
    engine: SaneGenerator, anchor_models: list[nn.Module], keep: int, seed: int = 0
) -> list[nn.Module]:
    """The noise control given SANE_SUB's selection: one control per scored candidate (the candidate's nearest anchor
    moved by the candidate's distance in a random direction), scored on the same split, the best `keep` kept.

    It answers whether subsampling alone explains the generated models' edge: if picking the best of many random
    perturbations of the anchors does as well, the decoded deviations carry nothing more than selection.
    """
    if engine.candidate_distances is None:
        raise ValueError("The selected noise control needs the candidates of a `subsample` run (none were scored).")
    distances, nearest = engine.candidate_distances
    images, labels = engine.score_data
    exclude = engine.distance_exclude(anchor_models[0])

    def build(index: int) -> nn.Module:
        model = copy.deepcopy(anchor_models[int(nearest[index])])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        add_isotropic_noise(model, float(distances[index]), generator, exclude)
        return engine.condition(model)

    scores = torch.tensor([evaluate_split(build(i), images, labels)["acc"] for i in range(len(distances))])
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    # Rebuilt from their seeds rather than kept: for large networks, holding every candidate would not fit.
    return [build(int(i)) for i in order]


def _zero_shot(model: nn.Module, task: Any) -> dict[str, float]:
    row = {}
    for split in TASK_SPLITS:
        metrics = evaluate_split(model, *task.split(split))
        row[f"{split}_loss"], row[f"{split}_acc"] = metrics["loss"], metrics["acc"]
    return row


def generate_models(
    sane: Any,
    zoo: Any,
    config: GenerateConfig,
    task: Any | None = None,
    generator: torch.Generator | None = None,
    processor: Any | None = None,
) -> GenerationResult:
    """Generate `config.n` networks (no files written): anchors, sampling, decoding, conditioning, optional evaluation.

    Args:
        sane (`SaneModel`): the pretrained SANE.
        zoo (`SaneZooDataset`): the tokenized zoo of the anchors.
        config (`GenerateConfig`): the run configuration.
        task (`TaskData`, *optional*): the task; defaults to `config.task` or the zoo's.
        generator (`torch.Generator`, *optional*): source of the sampling randomness; defaults to one seeded with
            `config.seed`.
        processor (`SaneProcessor`, *optional*): the SANE's weight processor (`load_sane_processor`); its layout
            must be the zoo's, and its normalization encodes the anchors and decodes the samples.
    """
    timings = {}
    start = time.perf_counter()
    engine = SaneGenerator(sane, zoo, config, task=task, processor=processor)
    timings["anchors"] = time.perf_counter() - start
    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)

    start = time.perf_counter()
    samples, history = engine.sample(generator)
    models = engine.build(samples)
    timings["sampling"] = time.perf_counter() - start
    logger.info("Generated %d networks with %s in %.1f s.", len(models), config.sampler, timings["sampling"])

    anchor_models = engine.anchor_models()
    exclude = engine.distance_exclude(models[0])
    distances, _ = weight_distances(models, anchor_models, exclude)
    processes = engine.processes
    zero_shot = processes.gather([_zero_shot(models[i], engine.task) for i in processes.share(len(models))])
    result = GenerationResult(
        models=models,
        samples=samples,
        anchors=engine.anchors,
        anchor_models=anchor_models,
        config=config,
        task=engine.task,
        timings=timings,
        distances=distances.tolist(),
        zero_shot=zero_shot,
        bootstrap_history=history,
    )
    if config.evaluate:
        start = time.perf_counter()
        extra_populations = (
            {"anchors_reconstructed": engine.reconstructed_anchors()} if config.evaluate_reconstructions else {}
        )
        if config.noise_control and engine.candidate_distances is not None:
            extra_populations["noise_control_selected"] = selected_noise_controls(
                engine, anchor_models, len(models), seed=config.eval_seed
            )
        result.report = compare_with_baselines(
            models,
            anchor_models,
            engine.task,
            config,
            engine.architecture,
            [engine.decoder.model_kwargs(a) for a in samples.anchor_index.tolist()],
            condition=engine.condition,
            exclude=exclude,
            extra_populations=extra_populations,
            generation_seconds=timings["sampling"],
        )
        timings["evaluation"] = time.perf_counter() - start
        result.report.extra["generation"] = {
            "sampler": config.sampler,
            "bandwidth": config.bandwidth,
            "kde_mode": config.kde_mode,
            "n": config.n,
            "num_candidates": config.num_candidates if config.sampler == "subsample" else None,
            "anchors": len(engine.anchors),
            "anchor_mean": sum(engine.anchors.values) / len(engine.anchors),
            "sampling_seconds": round(timings["sampling"], 3),
        }
    return result


# `GenerateConfig` options that do not change the generated networks: a rerun that differs only in these is the same.
_GENERATION_RUN_CONTROL = ("overwrite", "push_to_hub", "hub_private", "num_threads")


def finished_generation(config: GenerateConfig) -> dict[str, Any] | None:
    """The `generation.json` in `config.output_dir` if the folder holds a finished run with the same options (the
    folder is renamed into place complete, so the file means finished), else `None`; always `None` with
    `config.overwrite`. Lets the same command run again skip the work instead of refusing the non-empty folder."""
    if config.overwrite:
        return None
    try:
        stored = json.loads((Path(config.output_dir) / GENERATION_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

    def options(values: Any) -> dict[str, Any] | None:
        if not isinstance(values, dict):
            return None
        return {key: value for key, value in values.items() if key not in _GENERATION_RUN_CONTROL}

    same = isinstance(stored, dict) and options(stored.get("config")) == options(config.to_dict())
    return stored if same else None


def generate(config: GenerateConfig) -> GenerationResult:
    """`sane-generate`: load the SANE and the zoo, generate, evaluate, save to `config.output_dir`, optionally push.

    Returns:
        `GenerationResult` (with `output_dir`, `url` and `report` set).

    Raises:
        `ValueError`: `output_dir` is, contains or lies inside `config.model` or `config.dataset`.
        `FileExistsError`: `output_dir` is not empty without `config.overwrite`, or another process is writing it.
    """
    with torch_threads(config.num_threads):
        output_dir = Path(config.output_dir)
        check_output_apart_from_inputs(output_dir, {"model": config.model, "dataset": config.dataset})
        if output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite:
            # Fail before hours of work, not after. (`finished_generation` tells a rerun of the same run apart.)
            raise FileExistsError(
                f"{output_dir} exists and is not empty (and does not hold a generation with these options); pass "
                "--overwrite to replace it."
            )
        # Under a launch (`accelerate launch --num_processes K`) every process generates its share of the networks
        # and the main process alone writes them (docs/architecture.md#work-over-processes).
        processes = Processes.current()
        # A second run would silently replace this one's models.
        with output_lock(output_dir) if processes.is_main else contextlib.nullcontext():
            result = _generate_into(config, output_dir, write=processes.is_main)
        processes.barrier()  # the files are complete when any process returns
        result.output_dir = output_dir
        return result


def _generate_into(config: GenerateConfig, output_dir: Path, write: bool = True) -> GenerationResult:

    start = time.perf_counter()

    sane = load_local_or_hub(config.model, "SANE model", "model", load_sane_folder).eval()
    check_finite_weights(sane, f"--model {config.model}")
    processor = load_sane_processor(config.model)
    zoo = load_local_or_hub(config.dataset, "tokenized zoo dataset", "dataset", load_zoo_dataset)
    count = max(config.n, config.num_candidates if config.sampler == "subsample" else 0)
    layout = zoo.layout
    check_fits_in_memory(
        f"`n`={config.n} ({count} networks x {layout.num_tokens} tokens x {layout.token_size} values x 4 bytes)",
        count * layout.num_tokens * layout.token_size * 4,
    )
    load_seconds = time.perf_counter() - start
    result = generate_models(sane, zoo, config, processor=processor)
    result.timings["load"] = load_seconds
    if not write:
        return result
    save_generated_models(result, output_dir, overwrite=config.overwrite, plot=config.plot and config.evaluate)
    if config.push_to_hub:
        result.url = push_generated_models(output_dir, config.push_to_hub, private=config.hub_private)
    if not math.isfinite(sum(result.distances or [0.0])):
        logger.warning("Some generated networks have non-finite weights.")
    return result
