"""SANE pretraining with Accelerate: one process, several GPUs or several nodes (docs/method.md#objective).

The loop has accelerate's canonical shape: build, `prepare`, then `accumulate` /
`backward` / clip on sync / `step`. The per-step work is the pure `train_step`, which tests call directly.

Reproducibility and exact resume: every random draw of a step (window starts, permutations, noise, erasing) comes
from a generator seeded by `(seed, micro-batch counter, process index)`, and the data order of an epoch from
`(seed, epoch)`. A resumed run therefore needs nothing but the counters, which each step checkpoint keeps in
`sane_state.json` next to accelerate's model, optimizer and scheduler states.

Safe resume: a checkpoint folder may come from elsewhere, so resuming unpickles nothing with code execution
(accelerate's custom-object pickles are never written or read; its own states load with `weights_only=True`), and it
refuses a checkpoint of another run configuration, naming the differing options.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import shutil
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, extract_model_from_parallel, set_seed
from huggingface_hub import HfApi
from tqdm.auto import tqdm

from ..constants import VALIDATION_SPLIT
from ..data.hub_dataset import SaneZooDataset, load_zoo_dataset
from ..data.window_loaders import StreamedBatches, row_loaders, streamed_loaders, token_store
from ..data.windows import ArrowTokenStore, batch_rows, cut_windows
from ..data.zoo_permutations import build_permuter
from ..hub.sane_cards import TRAINER_STATE_ZOO_KEY, write_sane_card, zoo_summary
from ..models.sane import SaneConfig, SaneModel, add_embedding_pipeline, load_sane_folder
from ..tokenization.layout import TokenLayout
from ..tokenization.memory import check_fits_in_memory
from ..tokenization.permutations import TokenPermuter
from ..tokenization.processing_sane import SaneProcessor
from ..utils.allocation import retain_freed_memory
from ..utils.checks import check_finite_weights, weights_only_rejection
from ..utils.io import (
    check_output_apart_from_inputs,
    output_lock,
    write_json_atomic,
)
from ..utils.repo_ids import load_local_or_hub
from ..utils.threads import torch_threads
from .augmentations import make_two_views
from .checkpoints import (
    _FINAL_TMP,
    CHECKPOINTS_DIR,
    TRAIN_CONFIG_NAME,
    TRAINER_STATE_NAME,
    _check_no_other_run,
    _Counters,
    _LogState,
    _read_checkpoint_state,
    _read_stream_state,
    _remove_stale_temporaries,
    _resume_path,
    _run_configuration,
    _save_checkpoint,
)
from .configs import DEFAULT_SHUFFLE_BUFFER, PretrainConfig
from .losses import sane_pretraining_loss
from .optim import make_one_cycle_scheduler, make_sane_optimizer


logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------- data
def get_dataloaders(
    cfg: PretrainConfig, zoo: SaneZooDataset
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """Train/validation loaders of row numbers (`{"rows": [B]}`, `sane_hf.data.windows.row_loaders`); `train_step`
    reads the windows from `token_store(loader)`.

    This is the seam tests replace with a tiny in-memory zoo: a loader may also yield full checkpoints
    (`{"full_tokens": [B, S, T]}`), which `train_step` cuts windows from.
    """
    if "train" not in zoo.splits or len(zoo.splits["train"]) == 0:
        raise ValueError(f"The dataset {cfg.dataset} has no train checkpoints.")
    validation = zoo.splits.get(VALIDATION_SPLIT)
    return row_loaders(zoo.splits["train"], validation, cfg.batch_size, cfg.windows_per_checkpoint, cfg.seed)


def get_streaming_dataloaders(
    cfg: PretrainConfig, zoo: SaneZooDataset, process_index: int, num_processes: int, device: torch.device
) -> tuple[StreamedBatches, StreamedBatches | None]:
    """Train/validation batches of full checkpoints of a streamed zoo, this process's part
    (`sane_hf.data.windows.streamed_loaders`); a pass over the train split is an epoch of whole optimizer steps."""
    splits = zoo.info.splits
    if "train" not in splits or splits["train"].num_checkpoints == 0:
        raise ValueError(f"The dataset {cfg.dataset} has no train checkpoints.")
    has_validation = VALIDATION_SPLIT in splits and VALIDATION_SPLIT in zoo.splits
    return streamed_loaders(
        zoo.splits["train"],
        zoo.splits[VALIDATION_SPLIT] if has_validation else None,
        zoo.layout,
        train_rows=splits["train"].num_checkpoints,
        validation_rows=splits[VALIDATION_SPLIT].num_checkpoints if has_validation else 0,
        batch_size=cfg.batch_size,
        batches_multiple_of=cfg.gradient_accumulation_steps,
        shuffle_buffer=cfg.shuffle_buffer if cfg.shuffle_buffer is not None else DEFAULT_SHUFFLE_BUFFER,
        seed=cfg.seed,
        process_index=process_index,
        num_processes=num_processes,
        device=device,
    )


def build_sane_config(cfg: PretrainConfig, layout: TokenLayout) -> SaneConfig:
    """The architecture for a zoo: token size and position tables from the layout, the rest from the run config."""
    window = min(cfg.window_size, layout.num_tokens)
    if window < cfg.window_size:
        logger.warning(
            "`window_size`=%d is larger than the dataset's sequence (%d tokens); training on whole sequences, "
            "window_size=%d.",
            cfg.window_size,
            layout.num_tokens,
            window,
        )
    max_positions = cfg.max_positions or [max(bound, window) for bound in layout.max_positions]
    for coordinate, (needed, have) in enumerate(zip(layout.max_positions, max_positions)):
        if have < needed:
            raise ValueError(
                f"`max_positions[{coordinate}]`={have} is smaller than the dataset needs ({needed}); "
                f"use at least {layout.max_positions}."
            )
    halo = cfg.halo_size if cfg.halo_size is not None else window // 4
    return SaneConfig(
        token_size=layout.token_size,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        n_decoder_layers=cfg.n_decoder_layers,
        latent_dim=cfg.latent_dim,
        max_positions=max_positions,
        window_size=window,
        halo_size=min(halo, (window - 1) // 2),
        dropout=cfg.dropout,
        projection_dim=cfg.projection_dim,
        projection_pooling=cfg.projection_pooling,
        gamma=cfg.gamma,
        temperature=cfg.temperature,
    )


def load_or_build_model(cfg: PretrainConfig, zoo: SaneZooDataset) -> SaneModel:
    """A fresh SANE for the zoo, or `cfg.init_from` checked against the zoo's layout."""
    layout = zoo.layout
    if cfg.init_from is None:
        config = build_sane_config(cfg, layout)
        with torch.device("meta"):  # counts the parameters without allocating them
            num_parameters = sum(p.numel() for p in SaneModel(config).parameters())
        check_fits_in_memory(
            f"`d_model`={config.d_model}, `n_layers`={config.n_layers} ({num_parameters:,} parameters x 4 bytes x 4: "
            "weights, gradients and two AdamW moments)",
            num_parameters * 4 * 4,
        )
        model = SaneModel(config)
    else:
        model = load_local_or_hub(cfg.init_from, "SANE model", "init_from", load_sane_folder)
        check_finite_weights(model, f"`init_from` {cfg.init_from}")
        config = model.config
        if config.token_size != layout.token_size:
            raise ValueError(
                f"`init_from` {cfg.init_from} has token_size {config.token_size}, the dataset {cfg.dataset} has "
                f"{layout.token_size}; retokenize the zoo with --token_size {config.token_size}."
            )
        for coordinate, (needed, have) in enumerate(zip(layout.max_positions, config.max_positions)):
            if have < needed:
                raise ValueError(
                    f"`init_from` {cfg.init_from} has max_positions[{coordinate}]={have}, but the dataset needs "
                    f"{needed}."
                )
        logger.info("Starting from %s; its architecture overrides the model fields of the run config.", cfg.init_from)
    return model


# ------------------------------------------------------------------------------------------------------------- step
def step_generator(seed: int, counter: int, process_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one micro-batch: a function of the counters only, so resumed runs draw the same numbers."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + counter) * 1_009 + process_index)


def train_step(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    cfg: PretrainConfig,
    layout: TokenLayout,
    permuter: TokenPermuter | None,
    generator: torch.Generator,
    augment: bool = True,
    store: ArrowTokenStore | None = None,
) -> dict[str, torch.Tensor]:
    """One forward pass of the SANE objective on a batch of checkpoints (no backward).

    Takes one random window per checkpoint, builds two views (view 2 permuted; noise and erasing when `augment`),
    runs both views through the model in one batch and returns `sane_pretraining_loss`'s dict (`loss`, `loss_recon`,
    `loss_contrast`, `r2`).

    The batch is either `{"rows": [B]}` (rows of `store`: only the windows and the layers a permuted view needs are
    read) or `{"full_tokens": [B, S, T]}`; for the same generator both give the same windows, views and loss.
    """
    # The window is the model's own (with `--init_from` it may differ from `cfg.window_size`); DDP and compile wrap
    # the model in modules without its `config`, so read it from the unwrapped one.
    unwrapped = extract_model_from_parallel(model)
    window_size = unwrapped.config.window_size if hasattr(unwrapped, "config") else cfg.window_size
    permute = cfg.permutation_augmentation and permuter is not None
    windows = cut_windows(batch, window_size, layout, generator, permuter if permute else None, store)
    view_1, view_2 = make_two_views(
        windows,
        permuter=permuter if permute else None,
        noise_multiplicative=cfg.noise_multiplicative if augment else 0.0,
        noise_additive=cfg.noise_additive if augment else 0.0,
        erase={"p": cfg.erase_probability} if augment and cfg.erase_probability > 0 else None,
        permute_view_1=False,
        permute_view_2=permute,
        generator=generator,
    )
    # Both views in one forward pass (one graph, one DDP reduction, a larger matmul), and the loss of
    # SaneForPreTraining on them: view 1 rows first, as that model stacks its `(batch, 2, ...)` inputs.
    outputs = model(
        tokens=torch.cat([view_1["tokens"], view_2["tokens"]]),
        positions=torch.cat([view_1["positions"], view_2["positions"]]),
    )
    target_key = "clean_tokens" if cfg.denoise else "tokens"
    return sane_pretraining_loss(
        outputs.reconstructions.float(),
        outputs.projections.float(),
        torch.cat([view_1[target_key], view_2[target_key]]),
        torch.cat([view_1["mask"], view_2["mask"]]),
        gamma=cfg.gamma,
        temperature=cfg.temperature,
    )


@torch.no_grad()
def validation_losses(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: PretrainConfig,
    layout: TokenLayout,
    permuter: TokenPermuter | None,
    accelerator: Accelerator,
    store: ArrowTokenStore | None = None,
) -> dict[str, float]:
    """Validation objective: fixed windows and permutations (seeded per batch), no noise (upstream test pipeline)."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(loader):
        rows = batch_rows(batch)
        generator = step_generator(cfg.seed + 1, index, accelerator.process_index, rows.device)
        losses = train_step(model, batch, cfg, layout, permuter, generator, augment=False, store=store)
        n = torch.tensor(float(rows.shape[0]), device=accelerator.device)
        for key, value in losses.items():
            sums[key] = sums.get(key, torch.zeros((), device=accelerator.device)) + value.detach().float() * n
        count += n
    model.train()
    if not sums:
        return {}
    totals = accelerator.reduce(torch.stack([*sums.values(), count]), reduction="sum")
    return {f"val/{key}": float(totals[i] / totals[-1]) for i, key in enumerate(sums)}


def pretrain(cfg: PretrainConfig, dataloaders: tuple | None = None, zoo: SaneZooDataset | None = None) -> Path:
    """Pretrain SANE on a tokenized zoo and save it with `save_pretrained` into `cfg.output_dir`.

    Args:
        cfg (`PretrainConfig`): the run.
        dataloaders (`tuple`, *optional*): `(train_loader, val_loader)` replacing `get_dataloaders` (tests).
        zoo (`SaneZooDataset`, *optional*): an already loaded dataset (default: `load_zoo_dataset(cfg.dataset)`).

    Returns:
        `Path`: the output folder (config.json, model.safetensors, the weight processor's preprocessor_config.json
        (layout and normalization of the zoo), the remote-code files, train_config.json, trainer_state.json, and the model card README.md).

    Raises:
        `ValueError`: the step checkpoint to resume from (or, without resuming, one already in `output_dir`) is of
        another run configuration (the message names the differing options) or holds a pickle that is unsafe to
        load; `output_dir` overlaps the dataset or `init_from`; the loss or the weights became NaN/Inf (nothing is
        saved as the final model).
        `FileExistsError`: another process is writing `output_dir` (its lock file names it).
    """
    output_dir = Path(cfg.output_dir)
    check_output_apart_from_inputs(output_dir, {"dataset": cfg.dataset, "init_from": cfg.init_from})
    if cfg.retain_freed_memory:
        retain_freed_memory()
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir)),
    )
    # One writer per output folder: a second run would train into the same checkpoints and final files.
    lock = output_lock(output_dir) if accelerator.is_main_process else contextlib.nullcontext()
    with lock, torch_threads(cfg.num_threads):
        return _pretrain(cfg, accelerator, output_dir, dataloaders, zoo)


def _pretrain(
    cfg: PretrainConfig,
    accelerator: Accelerator,
    output_dir: Path,
    dataloaders: tuple | None,
    zoo: SaneZooDataset | None,
) -> Path:
    # Before the expensive loading: refuse a checkpoint of another run (or one that is unsafe to load).
    path = _resume_path(cfg, output_dir)
    if path is not None:
        resumed_state = _read_checkpoint_state(path, cfg)
    else:
        _check_no_other_run(cfg, output_dir)
    set_seed(cfg.seed)
    if zoo is None:
        load = partial(load_zoo_dataset, revision=cfg.dataset_revision, streaming=cfg.streaming)
        zoo = load_local_or_hub(cfg.dataset, "tokenized zoo dataset", "dataset", load)
    layout = zoo.layout
    model = load_or_build_model(cfg, zoo)
    permuter = build_permuter(zoo) if cfg.permutation_augmentation else None
    if dataloaders is not None:
        train_loader, val_loader = dataloaders
    elif cfg.streaming:
        # Not prepared: each process already reads its own part of the stream, and the batches are moved here.
        train_loader, val_loader = get_streaming_dataloaders(
            cfg, zoo, accelerator.process_index, accelerator.num_processes, accelerator.device
        )
    else:
        train_loader, val_loader = get_dataloaders(cfg, zoo)
    streamed = isinstance(train_loader, StreamedBatches)
    sampler = getattr(train_loader, "sampler", None)
    train_store, val_store = token_store(train_loader), token_store(val_loader)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_sane_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    if not streamed:
        train_loader = accelerator.prepare(train_loader)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    # The prepared scheduler advances num_processes times per optimizer step (accelerate's convention).
    scheduler = make_one_cycle_scheduler(optimizer, cfg.lr, total_steps * accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)
    counters = _Counters()
    log_state = _LogState()
    if path is not None:
        try:
            # Explicit, whatever accelerate's default: the optimizer and scheduler pickles come from the folder too.
            accelerator.load_state(str(path), load_kwargs={"weights_only": True})
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path}: refused to resume: torch.load(weights_only=True) rejected a state file "
                f"({weights_only_rejection(error)})."
            ) from None
        except (RuntimeError, EOFError) as error:
            # A truncated or edited state file (torch's zip reader, `load_state_dict`): the checkpoint, not the code.
            first_line = next(iter(str(error).strip().splitlines()), "")
            raise ValueError(
                f"{path}: cannot resume: a state file is corrupt or does not fit this run "
                f"({type(error).__name__}: {first_line})."
            ) from None
        counters.load_state_dict(resumed_state["counters"])
        if streamed:
            train_loader.load_state_dict(_read_stream_state(path, accelerator.process_index))
        log_state.load_state_dict(resumed_state["log"])
        logger.info("Resumed from %s at epoch %d, step %d.", path, counters.epoch, counters.optimizer_steps)
    first_step = counters.optimizer_steps

    # Nothing is written before the first checkpoint: a run that fails early (or diverges) leaves no output. The
    # run configuration is written with the final model; step checkpoints carry their own.
    if accelerator.is_main_process and output_dir.is_dir():
        _remove_stale_temporaries(output_dir)
    if cfg.log_with:
        accelerator.init_trackers("sane_pretrain", config={k: v for k, v in cfg.to_dict().items() if v is not None})

    unwrapped = accelerator.unwrap_model(model)
    logger.info(
        "Pretraining SANE (%.2fM parameters) on %s: %d windows/epoch, %d steps, %d process(es), %s precision.",
        unwrapped.num_parameters() / 1e6,
        cfg.dataset,
        len(train_loader) * cfg.batch_size * accelerator.num_processes,
        total_steps,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    history = log_state.history
    progress = tqdm(
        total=total_steps,
        initial=counters.optimizer_steps,
        desc="pretrain",
        disable=not accelerator.is_local_main_process,
    )
    start_time = time.perf_counter() - log_state.seconds

    def _elapsed() -> float:
        """Training wall seconds so far (the whole run's, across resumes): the x-axis of quality-per-second curves."""
        return round(time.perf_counter() - start_time, 3)

    def checkpoint() -> None:
        log_state.running, log_state.running_count = running, running_count
        log_state.seconds = time.perf_counter() - start_time
        state = {
            "counters": counters.state_dict(),
            "log": log_state.state_dict(),
            "run_config": _run_configuration(cfg),
        }
        stream_state = train_loader.state_dict() if streamed else None
        _save_checkpoint(
            accelerator, output_dir, counters.optimizer_steps, cfg.save_total_limit, state, stream_state=stream_state
        )

    running, running_count = log_state.running, log_state.running_count
    done = counters.optimizer_steps >= total_steps
    model.train()
    while not done and counters.epoch < cfg.epochs:
        if streamed:
            # A resumed stream already stands after the batches taken (its state came with the checkpoint).
            train_loader.set_epoch(counters.epoch)
            loader = train_loader.iter_from(counters.batches_in_epoch)
        elif counters.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, counters.batches_in_epoch)
        else:
            loader = train_loader
        # The order of an epoch depends on (seed, epoch) only. A prepared loader re-sets its sampler's epoch from
        # its own iteration counter (and a skipping loader starts it at 0), so set it there too.
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(counters.epoch)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(counters.epoch)
        for batch in loader:
            generator = step_generator(
                cfg.seed, counters.micro_batches, accelerator.process_index, batch_rows(batch).device
            )
            with accelerator.accumulate(model):
                losses = train_step(model, batch, cfg, layout, permuter, generator, store=train_store)
                _check_finite_loss(losses["loss"], counters.optimizer_steps + 1, cfg, progress)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            counters.micro_batches += 1
            counters.batches_in_epoch += 1
            for key, value in losses.items():
                running[key] = running.get(key, 0.0) + float(value.detach())
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            counters.optimizer_steps += 1
            progress.update(1)
            if counters.optimizer_steps % cfg.logging_steps == 0 or counters.optimizer_steps == total_steps:
                metrics = {f"train/{k}": v / running_count for k, v in running.items()}
                metrics["train/lr"] = scheduler.get_last_lr()[0]
                accelerator.log(metrics, step=counters.optimizer_steps)
                history.append(
                    {"step": counters.optimizer_steps, "epoch": counters.epoch, "seconds": _elapsed(), **metrics}
                )
                progress.set_postfix(
                    loss=f"{metrics['train/loss']:.4f}", r2=f"{metrics.get('train/r2', float('nan')):.3f}"
                )
                running, running_count = {}, 0
            # The last step's checkpoint waits for the epoch's end (validation), so it holds the complete log.
            if (
                cfg.save_steps
                and counters.optimizer_steps % cfg.save_steps == 0
                and counters.optimizer_steps < total_steps
            ):
                checkpoint()
            if counters.optimizer_steps >= total_steps:
                done = True
                break
        if not done or counters.batches_in_epoch >= len(train_loader):
            counters.epoch += 1
            counters.batches_in_epoch = 0
        if val_loader is not None:
            metrics = validation_losses(model, val_loader, cfg, layout, permuter, accelerator, store=val_store)
            accelerator.log(metrics, step=counters.optimizer_steps)
            history.append(
                {"step": counters.optimizer_steps, "epoch": counters.epoch, "seconds": _elapsed(), **metrics}
            )
            logger.info("epoch %d step %d: %s", counters.epoch, counters.optimizer_steps, metrics)
    progress.close()
    if cfg.save_steps and counters.optimizer_steps % cfg.save_steps == 0 and counters.optimizer_steps > first_step:
        checkpoint()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # The loss check misses an update that diverges on the last step (and fp16 runs): no NaN model is saved.
    check_finite_weights(unwrapped, f"{output_dir}: not saved: the model after step {counters.optimizer_steps}")
    checksums = _parameter_checksums(unwrapped, accelerator)
    in_sync = bool((checksums == checksums[:1]).all())
    if not in_sync:
        # e.g. `torchrun` without ACCELERATE_USE_CPU=1 on CPU runs unsynchronized copies.
        logger.error("Parameters differ across the %d processes: %s", accelerator.num_processes, checksums.tolist())
    # Saved into a temporary folder, then moved file by file (each `os.replace` is atomic): a kill while saving never
    # leaves a truncated model.safetensors in output_dir.
    final_tmp = output_dir / _FINAL_TMP
    if accelerator.is_main_process:
        shutil.rmtree(final_tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    # The card's pipeline_tag is true: pipeline("feature-extraction", model=<this folder or repo>) embeds checkpoints.
    add_embedding_pipeline(unwrapped, final_tmp)
    unwrapped.save_pretrained(final_tmp, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        # The weight processor travels with the weights: it turns checkpoints into this SANE's inputs and back.
        SaneProcessor(zoo.layout, zoo.normalization).save_pretrained(final_tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for file in sorted(final_tmp.iterdir()):
            os.replace(file, output_dir / file.name)
        shutil.rmtree(final_tmp, ignore_errors=True)
    if accelerator.is_main_process:
        write_json_atomic(output_dir / TRAIN_CONFIG_NAME, cfg.to_dict())
        write_json_atomic(
            output_dir / TRAINER_STATE_NAME,
            {
                **counters.state_dict(),
                "total_steps": total_steps,
                "num_processes": accelerator.num_processes,
                # What ran: the config's choice, else the launcher's (`accelerate launch` / `accelerate config`).
                "mixed_precision": accelerator.mixed_precision,
                "ranks_in_sync": in_sync,
                "parameter_checksums": checksums.tolist(),
                "seconds": round(time.perf_counter() - start_time, 2),
                # What this invocation did (the rest describes the whole run): where it resumed, and how far it went.
                "resumed_from_step": first_step if path is not None else None,
                "steps_this_run": counters.optimizer_steps - first_step,
                "log_history": history,
                TRAINER_STATE_ZOO_KEY: zoo_summary(zoo.info, cfg.dataset, cfg.dataset_revision),
            },
        )
        write_sane_card(output_dir, repo_id=cfg.push_to_hub)
        if cfg.push_to_hub:
            push_pretrained_folder(output_dir, cfg.push_to_hub, private=cfg.hub_private)
    # The prepared model goes before `end_training` destroys the process group: freed after it (when this function
    # returns), the DDP reducer drops the group's last reference while holding the GIL and joins gloo's worker thread,
    # which may be waiting for the GIL to finish the last barrier: a hang at exit, seen in a 2-process CPU run.
    model, optimizer, scheduler = accelerator.free_memory(model, optimizer, scheduler)
    accelerator.end_training()
    return output_dir


def _check_finite_loss(loss: torch.Tensor, step: int, cfg: PretrainConfig, progress: tqdm) -> None:
    """Stop a run whose loss became NaN/Inf (a diverged run would otherwise train on and save NaN weights); the
    progress bar is closed first, so that the error starts a line of its own.

    Under fp16 the gradient scaler expects overflowing steps and skips them, so the weights are checked instead (at
    the end of the run).
    """
    if cfg.mixed_precision == "fp16":
        return
    value = float(loss.detach())
    if not math.isfinite(value):
        progress.close()
        raise ValueError(
            f"The loss became {value} at step {step}: the run diverged; stopping without saving a model. Lower "
            f"--lr (now {cfg.lr:g}) or set --max_grad_norm."
        )


def _parameter_checksums(model: torch.nn.Module, accelerator: Accelerator) -> torch.Tensor:
    """`[num_processes, 2]` (sum, sum of squares) of all parameters, per process: equal rows iff ranks agree."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    local = torch.stack([flat.sum(), flat.square().sum()])[None].to(accelerator.device)
    return accelerator.gather(local).cpu()


def push_pretrained_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    probe_results: str | os.PathLike | Mapping | None = None,
) -> str:
    """Upload a saved SANE folder (without the resumable step checkpoints) as one commit; returns the commit url.

    The folder's card is rebuilt first so that its snippets name `repo_id` (and, with `probe_results`, a
    `results.json` of `sane-predict`, its `model-index` holds the probe results); a hand-written `README.md` is
    uploaded as it is.
    """

    write_sane_card(folder, repo_id=repo_id, probe_results=probe_results)
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        ignore_patterns=[f"{CHECKPOINTS_DIR}/*", "*.tmp", "logs/*"],
        commit_message="Upload SANE pretrained with sane_hf",
    )
    return str(getattr(info, "commit_url", info))
