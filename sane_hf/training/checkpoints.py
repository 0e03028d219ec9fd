"""A pretraining run's output folder (docs/architecture.md): its step checkpoints (Accelerate's `save_state` plus the
loop's own state as JSON), finding and checking the checkpoint to resume from, and the `trainer_state.json` a
finished run leaves."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import load as load_safely_with_accelerate

from ..utils.checks import config_differences, weights_only_rejection
from ..utils.io import (
    read_json,
    remove_temporary_files,
    write_json_atomic,
)
from .configs import PretrainConfig


logger = logging.getLogger(__name__)


TRAIN_CONFIG_NAME = "train_config.json"


TRAINER_STATE_NAME = "trainer_state.json"


CHECKPOINTS_DIR = "checkpoints"


# The loop's own state in a step checkpoint (counters, log, run configuration), as JSON: nothing to unpickle.
CHECKPOINT_STATE_NAME = "sane_state.json"


# A streamed run's position in its part of the stream, one JSON file per process (`StreamingWindowLoader.state_dict`).
STREAM_STATE_NAME = "stream_state_{process_index}.json"


# Options that steer a run but not the model it trains: a resumed run may change them.
RUN_CONTROL_FIELDS = (
    "output_dir",
    "resume_from_checkpoint",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "log_with",
    "push_to_hub",
    "hub_private",
    "num_threads",
    "compile",
    "retain_freed_memory",
)


# Where the final `save_pretrained` writes before its files are moved into the output folder.
_FINAL_TMP = ".save_pretrained.tmp"


# ------------------------------------------------------------------------------------------------------------- loop
class _Counters:
    """Progress counters saved with `save_state` (the only state needed for exact resume besides the model)."""

    def __init__(self):
        self.epoch = 0
        self.batches_in_epoch = 0
        self.micro_batches = 0
        self.optimizer_steps = 0

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


class _LogState:
    """The log so far and the running sums since its last line, saved with `save_state` next to `_Counters`, so
    that a resumed run's `trainer_state.json` holds the whole log, equal to an uninterrupted run's."""

    def __init__(self):
        self.history: list[dict[str, Any]] = []
        self.running: dict[str, float] = {}
        self.running_count = 0
        self.seconds = 0.0  # training wall time up to the checkpoint, so a resumed run reports the whole run's

    def state_dict(self) -> dict[str, Any]:
        # Stored as JSON (CHECKPOINT_STATE_NAME), where floats round-trip exactly.
        return {
            "history": self.history,
            "running": self.running,
            "running_count": self.running_count,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history[:] = state["history"]
        self.running = dict(state["running"])
        self.running_count = int(state["running_count"])
        self.seconds = float(state["seconds"])


def _run_configuration(cfg: PretrainConfig) -> dict[str, Any]:
    """The options that decide what a run trains (everything but `RUN_CONTROL_FIELDS`)."""
    return {key: value for key, value in cfg.to_dict().items() if key not in RUN_CONTROL_FIELDS}


def _check_checkpoint_pickles(path: Path) -> None:
    """Refuse a step checkpoint holding pickles that need code execution to load.

    Accelerate loads custom-object states (`custom_checkpoint_<i>.pkl`) with `weights_only=False`, which runs any
    code a crafted file carries; pretraining never writes them, so their presence means the folder was written by an
    older sane_hf or by someone else. The random states (`random_states_<i>.pkl`) load with `weights_only=True`, but
    accelerate ignores one that fails to load, so they are checked here to refuse rather than silently skip them.
    """

    for file in sorted(path.glob("*.pkl")):
        if re.fullmatch(r"custom_checkpoint_\d+\.pkl", file.name):
            raise ValueError(
                f"{file}: refused to resume from {path}: sane_hf never writes custom_checkpoint pickles (loading one "
                "can run code); it is from an older sane_hf or another tool. Start the run without "
                "--resume_from_checkpoint, or in a new output_dir."
            )
        try:
            load_safely_with_accelerate(file, map_location="cpu")  # accelerate's safe loader: weights_only=True plus numpy RNG states
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise ValueError(
                f"{file}: refused to resume from {path}: torch.load(weights_only=True) rejected the file "
                f"({weights_only_rejection(error)})."
            ) from None


def _read_checkpoint_state(path: Path, cfg: PretrainConfig) -> dict[str, Any]:
    """The loop state of the step checkpoint `path`, after checking that it is safe to load and of this run."""
    _check_checkpoint_pickles(path)
    state_file = path / CHECKPOINT_STATE_NAME
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        stored = state["run_config"]
        if not isinstance(stored, dict):
            raise TypeError(f"`run_config` is a {type(stored).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{state_file}: cannot resume from {path}: expected the step-checkpoint state sane_hf writes "
            f"(counters, log, run_config), found {type(error).__name__}: {error}."
        ) from None
    differing, details = config_differences(stored, _run_configuration(cfg))
    if differing:
        raise ValueError(
            f"{path} is a checkpoint of a run with another configuration (differing options: "
            f"{', '.join(differing)}). {details}. Resume with the stored options, or use another output_dir."
        )
    return state


def _read_stream_state(path: Path, process_index: int) -> dict[str, Any]:
    """This process's stream position in the step checkpoint `path` of a streamed run."""
    name = STREAM_STATE_NAME.format(process_index=process_index)
    return read_json(path / name, f"the stream position of process {process_index}, which a streamed run saves")


def _check_no_other_run(cfg: PretrainConfig, output_dir: Path) -> None:
    """A run started from scratch into a folder with step checkpoints of another configuration would mix the two
    runs' checkpoints (and `save_total_limit` would delete the new run's ones first): refuse it."""
    path = _latest_checkpoint(output_dir)
    if path is None:
        return
    try:
        _read_checkpoint_state(path, cfg)
    except ValueError as error:
        raise ValueError(
            f"{output_dir} holds step checkpoints of another run ({error}) Use another output_dir, or delete "
            f"{output_dir / CHECKPOINTS_DIR} to start over."
        ) from None


def _resume_path(cfg: PretrainConfig, output_dir: Path) -> Path | None:
    """The step checkpoint `cfg.resume_from_checkpoint` names: a folder, `"latest"`, or `"auto"` (latest if any)."""
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint in ("latest", "auto"):
        path = _latest_checkpoint(output_dir)
        if path is None and cfg.resume_from_checkpoint == "auto":
            logger.info("No step checkpoint in %s: starting from scratch.", output_dir / CHECKPOINTS_DIR)
            return None
    else:
        path = Path(cfg.resume_from_checkpoint)
    if path is None or not path.is_dir():
        raise FileNotFoundError(
            f"No checkpoint to resume from at {cfg.resume_from_checkpoint!r} (in {output_dir}); expected a step "
            f"checkpoint folder, or 'latest' with {output_dir / CHECKPOINTS_DIR}/step_<N>/ present ('auto' starts "
            "from scratch when there is none)."
        )
    return path


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Remove what a run killed mid-write left: half-saved step checkpoints, a half-saved final model, temp files."""
    for stale in [*(output_dir / CHECKPOINTS_DIR).glob(".step_*.tmp"), output_dir / _FINAL_TMP]:
        if stale.is_dir():
            logger.info("Removing %s, left by an interrupted run.", stale)
            shutil.rmtree(stale, ignore_errors=True)
    remove_temporary_files(output_dir)


def _latest_checkpoint(output_dir: Path) -> Path | None:
    folders = [p for p in (output_dir / CHECKPOINTS_DIR).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return max(folders, key=lambda p: int(p.name[5:]), default=None)


def _save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    step: int,
    limit: int | None,
    state: dict[str, Any],
    stream_state: dict[str, Any] | None = None,
) -> None:
    """`save_state`, the loop `state` (`CHECKPOINT_STATE_NAME`) and, for a streamed run, every process's
    `stream_state` (`STREAM_STATE_NAME`) into a temporary folder, renamed when complete: a kill never leaves a half
    checkpoint (and an interrupted save, Ctrl-C, removes its temporary folder)."""
    final = output_dir / CHECKPOINTS_DIR / f"step_{step}"
    tmp = output_dir / CHECKPOINTS_DIR / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if stream_state is not None:
            write_json_atomic(tmp / STREAM_STATE_NAME.format(process_index=accelerator.process_index), stream_state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / CHECKPOINT_STATE_NAME, state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process and limit:
        folders = sorted(
            (p for p in final.parent.glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
        )
        for old in folders[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def read_trainer_state(folder: str | os.PathLike) -> dict:
    """The `trainer_state.json` of a finished run (counters, wall time, log history)."""
    return read_json(Path(folder) / TRAINER_STATE_NAME, "the trainer state pretrain writes")
