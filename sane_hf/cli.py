"""Console entry points: parse a dataclass config (YAML `--config` plus flag overrides), call one library function."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser


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
        import yaml

        with open(namespace.config, encoding="utf-8") as f:
            yaml_values = yaml.safe_load(f) or {}
        if not isinstance(yaml_values, dict):
            parser.error(f"{namespace.config} must hold a mapping of option names to values.")
        known = {f for cls in config_classes for f in cls.__dataclass_fields__}
        unknown = sorted(set(yaml_values) - known)
        if unknown:
            parser.error(f"unknown key(s) {unknown} in {namespace.config}; valid keys: {sorted(known)}")
    parser.set_defaults(**yaml_values)
    parsed = parser.parse_args(args)
    outputs = []
    for cls in config_classes:
        values = {name: getattr(parsed, name) for name in cls.__dataclass_fields__}
        outputs.append(cls(**values))
    return tuple(outputs)


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def main_quickstart(args: Sequence[str] | None = None) -> None:
    """`sane-quickstart`: tokenize, round-trip, encode/decode and save/reload on the embedded default."""
    from .quickstart import QuickstartConfig, run_quickstart

    _setup_logging()
    (config,) = parse_config((QuickstartConfig,), args)
    summary = run_quickstart(config)
    print(f"Quickstart finished in {summary['seconds']} s. Summary: {config.output_dir}/quickstart.json")
    for key in ("layout", "round_trip_exact", "sane_parameters", "embedding_shape", "reload_exact"):
        print(f"  {key}: {summary[key]}")
