"""Console entry points: parse a dataclass config (YAML `--config` plus flag overrides), call one library function.

Each entry point imports its own stage inside the function, the one place in the package that defers imports of
its own modules: a command (or its `--help`) loads only the stage it runs, not all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

import yaml
from tqdm import tqdm
from transformers import HfArgumentParser


logger = logging.getLogger(__name__)

# Errors of input a user can fix (paths, files, formats, values; the library raises `ValueError` subclasses and
# `OSError`s naming the file/field, what was expected and what was found; the Hub's errors are `OSError`s too). A
# command reports them as one line and exits with status 1; any other exception is a bug and keeps its traceback.
# `SANE_HF_TRACEBACK=1` shows the traceback of a user error too.
USER_ERRORS = (ValueError, OSError)
EXIT_USER_ERROR = 1
# Ctrl-C: the shell's status for SIGINT (128 + 2). Outputs are written atomically, so an interrupted command leaves
# nothing half-written, and rerunning it resumes or redoes the work; a traceback would only hide that.
EXIT_INTERRUPTED = 130


def one_line_errors(command: str) -> Callable:
    """Decorate a `main_*` entry point: user errors (`USER_ERRORS`) become `"<command>: error: <message>"` on stderr
    and exit status 1, and Ctrl-C `"<command>: interrupted ..."` and exit status 130, with no traceback."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as error:
                if os.environ.get("SANE_HF_TRACEBACK", "") not in ("", "0"):
                    raise
                logger.debug("%s failed", command, exc_info=True)
                message = " ".join(str(error).split()) or type(error).__name__
                print(f"{command}: error: {message}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_USER_ERROR) from None
            except KeyboardInterrupt:
                if os.environ.get("SANE_HF_TRACEBACK", "") not in ("", "0"):
                    raise
                _close_progress_bars()
                print(
                    f"{command}: interrupted; no output file is half-written: run the same command to resume or redo it.",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(EXIT_INTERRUPTED) from None

        return wrapper

    return decorate


def _close_progress_bars() -> None:
    """Close the live tqdm bars, which would otherwise redraw themselves at exit, after the command's last line."""

    for bar in list(tqdm._instances):
        bar.close()


def _unique_key_loader() -> type:
    """A `yaml.SafeLoader` that refuses a key given twice in one mapping (plain YAML keeps the last one silently,
    so `epochs: 5` ... `epochs: 50` would run with 50)."""

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; expected each option once", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def parse_config(config_classes: tuple[type, ...], args: Sequence[str] | None = None) -> tuple:
    """Parse `config_classes` from `--config file.yaml` (optional) and command-line flags, flags winning.

    Unknown keys in the YAML file or unknown flags are errors, so a typo never silently falls back to a default.
    """
    parser = HfArgumentParser(config_classes)
    parser.add_argument("--config", type=str, default=None, help="YAML file with values for the options below.")
    args = list(sys.argv[1:] if args is None else args)
    namespace, remaining = parser.parse_known_args(args)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    yaml_values: dict = {}
    if namespace.config is not None:

        try:
            with open(namespace.config, encoding="utf-8") as f:
                yaml_values = yaml.load(f, Loader=_unique_key_loader()) or {}
        except OSError as error:
            parser.error(f"--config {namespace.config}: cannot read the file ({error.strerror or error}).")
        except yaml.YAMLError as error:
            parser.error(f"--config {namespace.config}: invalid YAML ({' '.join(str(error).split())}).")
        if not isinstance(yaml_values, dict):
            parser.error(
                f"{namespace.config} must hold a mapping of option names to values, found a "
                f"{type(yaml_values).__name__}."
            )
        known = {f for cls in config_classes for f in cls.__dataclass_fields__}
        unknown = sorted(set(yaml_values) - known)
        if unknown:
            parser.error(f"unknown key(s) {unknown} in {namespace.config}; valid keys: {sorted(known)}")
        for key in sorted(k for k, v in yaml_values.items() if v is None):
            spec = next(cls.__dataclass_fields__[key] for cls in config_classes if key in cls.__dataclass_fields__)
            value = spec.default
            if value is dataclasses.MISSING:
                value = None if spec.default_factory is dataclasses.MISSING else spec.default_factory()
            if value is not None:  # null where the option needs a value would surface later as a TypeError
                parser.error(
                    f"{namespace.config}: `{key}: null`, but {key} needs a value (default {value!r}); remove the "
                    "line to use the default."
                )
        # A value of the wrong type in the file fails in argparse's conversion or in the config's validation; say
        # where the values came from, since the message names only the option.
        report = parser.error
        parser.error = lambda message: report(f"{message} (options from {namespace.config} and the command line)")
    parser.set_defaults(**yaml_values)
    parsed = parser.parse_args(args)
    outputs = []
    for cls in config_classes:
        values = {name: getattr(parsed, name) for name in cls.__dataclass_fields__}
        try:
            outputs.append(cls(**values))
        except (ValueError, TypeError) as error:
            parser.error(" ".join(str(error).split()))
    return tuple(outputs)


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


@one_line_errors("sane-quickstart")
def main_quickstart(args: Sequence[str] | None = None) -> None:
    """`sane-quickstart`: the whole pipeline on the embedded default (zoo, dataset, SANE, probes, generation)."""

    from .quickstart import STAGES, QuickstartConfig, run_quickstart

    _setup_logging()
    (config,) = parse_config((QuickstartConfig,), args)
    started: dict[str, float] = {}

    def show(stage: str, event: str) -> None:
        number = f"[{STAGES.index(stage) + 1}/{len(STAGES)}]"
        if event == "start":
            started[stage] = time.perf_counter()
            print(f"{number} {stage}: running ...", flush=True)
        elif event == "skip":
            print(f"{number} {stage}: already complete, skipped", flush=True)
        else:
            print(f"{number} {stage}: done in {time.perf_counter() - started[stage]:.0f} s", flush=True)

    summary = run_quickstart(config, stage_callback=show)
    print(f"Quickstart finished in {summary['seconds_this_run']:.0f} s. Report: {summary['report']}")


@one_line_errors("sane-convert-zoo")
def main_convert_zoo(args: Sequence[str] | None = None) -> None:
    """`sane-convert-zoo`: tokenize a model zoo into a Hub-style dataset folder (and optionally push it)."""
    from .data.configs import ConvertConfig
    from .data.sharded_conversion import ShardingConfig, convert_zoo_sharded

    _setup_logging()
    config, sharding = parse_config((ConvertConfig, ShardingConfig), args)
    result = convert_zoo_sharded(config, sharding)
    if not _is_main_process():
        _leave_launch()
        return
    if sharding.shard_index is not None and not result.skipped:
        print(
            f"Converted shard worker {sharding.shard_index} of {sharding.num_shards} in {result.seconds:.1f} s; once "
            f"every worker is done: --num_shards {sharding.num_shards} --finalize true."
        )
        return
    info = result.info
    done = "Already converted (same zoo models and options; skipped):" if result.skipped else "Converted"
    print(
        f"{done} {info.num_checkpoints} checkpoints of {info.num_models} models into {result.output_dir} "
        f"({result.num_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s: {info.num_tokens} tokens x {info.token_size}."
    )
    for name, split in info.splits.items():
        print(f"  {name}: {split.num_models} models, {split.num_checkpoints} checkpoints, {len(split.files)} shards")
    filtering = info.filtering
    print(f"  filtering: {filtering.get('num_checkpoints_kept')}/{filtering.get('num_checkpoints_read')} kept")
    if result.url:
        print(f"  pushed: {result.url}")
    _leave_launch()


@one_line_errors("sane-pretrain")
def main_pretrain(args: Sequence[str] | None = None) -> None:
    """`sane-pretrain`: pretrain SANE on a tokenized zoo (one process, or many under `accelerate launch`/torchrun)."""
    from .training.configs import PretrainConfig
    from .training.loop import pretrain

    _setup_logging()
    (config,) = parse_config((PretrainConfig,), args)
    output_dir = pretrain(config)
    if _is_main_process():
        print(f"SANE saved to {output_dir}")
    _leave_launch()


def _is_main_process() -> bool:
    """Whether this process prints a command's summary: the only one, or process 0 of a launch."""
    return int(os.environ.get("RANK", "0")) == 0


def _leave_launch() -> None:
    """End a process of a multi-process launch once its command is done (a no-op in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch 2.13 + gloo aborts at interpreter exit in 10-25% of multi-process runs (seen on this project's CPU machines); the work
        # is saved and the process group torn down by now, so leave without running the exit handlers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@one_line_errors("sane-make-zoo")
def main_make_zoo(args: Sequence[str] | None = None) -> None:
    """`sane-make-zoo`: train a model zoo (a population of seeded models, checkpointed every epoch); resumable."""
    from .data.configs import ZooConfig
    from .data.zoo_builder import build_zoo

    _setup_logging()
    (config,) = parse_config((ZooConfig,), args)
    summary = build_zoo(config)
    print(
        f"Zoo {summary['output_dir']}: {summary['num_done']}/{summary['num_models']} models finished "
        f"({summary['trained']} trained now, {summary['skipped']} already done) in {summary['seconds']} s, "
        f"{summary['size_bytes'] / 1e6:.1f} MB on disk."
    )
    spread = summary["final_test_acc"]
    if spread is not None:
        print("  final test accuracy: " + ", ".join(f"{key} {value:.3f}" for key, value in spread.items()))


@one_line_errors("sane-predict")
def main_predict(args: Sequence[str] | None = None) -> None:
    """`sane-predict`: predict model properties from SANE embeddings, with the W and s(W) baselines (SANE §5)."""
    from .probing.configs import PredictConfig
    from .probing.predict import predict_properties
    from .probing.report import RESULTS_MD

    _setup_logging()
    (config,) = parse_config((PredictConfig,), args)
    results = predict_properties(config)
    if results is None:  # a process of a launch other than the main one: its share is embedded
        _leave_launch()
        return
    print(f"Property prediction finished in {results['timings']['total']} s; report in {config.output_dir}:")
    print("  " + ", ".join(results["files"]))
    with open(f"{config.output_dir}/{RESULTS_MD}", encoding="utf-8") as file:
        table = file.read().split("\n## ")[0]
    print(table.rstrip())
    _leave_launch()


@one_line_errors("sane-generate")
def main_generate(args: Sequence[str] | None = None) -> None:
    """`sane-generate`: sample networks from a pretrained SANE, evaluate, save `model_000/`, ... (and push)."""
    from .generation import GenerateConfig, finished_generation, generate

    _setup_logging()
    (config,) = parse_config((GenerateConfig,), args)
    stored = finished_generation(config)
    if stored is not None:
        print(
            f"Already generated (same options; skipped): {len(stored.get('models', []))} {config.sampler} networks "
            f"in {config.output_dir}."
        )
        return
    result = generate(config)
    if not _is_main_process():
        _leave_launch()
        return
    timings = ", ".join(f"{key} {value:.1f} s" for key, value in result.timings.items())
    print(f"Generated {len(result.models)} {config.sampler} networks into {result.output_dir} ({timings}).")
    zero_shot = [row["test_acc"] for row in result.zero_shot]
    print(
        f"  zero-shot test accuracy: {sum(zero_shot) / len(zero_shot):.4f} (min {min(zero_shot):.4f}, max {max(zero_shot):.4f})"
    )
    if result.report is not None:
        print(result.report.to_markdown().split("\n\n")[2])
    if result.url:
        print(f"  pushed: {result.url}")
    _leave_launch()


@one_line_errors("sane-evaluate")
def main_evaluate(args: Sequence[str] | None = None) -> None:
    """`sane-evaluate`: fine-tune saved generated networks next to scratch, anchors and the noise control."""
    from .generation import EvaluateConfig, evaluate_models

    _setup_logging()
    (config,) = parse_config((EvaluateConfig,), args)
    report = evaluate_models(config)
    if _is_main_process():
        print(f"Evaluation of {config.models} written to {config.output_dir or config.models}:")
        print(report.to_markdown().split("\n\n")[2])
    _leave_launch()
