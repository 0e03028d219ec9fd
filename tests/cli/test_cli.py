"""Entry points: the README's main job runs, every command explains its options, configs reject typos."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sane_hf.cli import main_quickstart, parse_config


REPO = Path(__file__).resolve().parents[2]


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    main_quickstart(["--output_dir", str(tmp_path)])
    summary = json.loads((tmp_path / "quickstart.json").read_text())
    assert summary["round_trip_exact"] and summary["reload_exact"]
    assert summary["reloaded_with_automodel"] == "SaneModel"
    assert (tmp_path / "sane" / "sane_layout.json").is_file()
    assert "Quickstart finished" in capsys.readouterr().out


@dataclass
class _Options:
    name: str = field(default="a", metadata={"help": "A name."})
    size: int = field(default=1, metadata={"help": "A size."})


def test_parse_config_yaml_flags_and_errors(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: from_yaml\nsize: 3\n")
    (options,) = parse_config((_Options,), ["--config", str(config), "--size", "5"])
    assert (options.name, options.size) == ("from_yaml", 5)
    config.write_text("nmae: typo\n")
    with pytest.raises(SystemExit):
        parse_config((_Options,), ["--config", str(config)])
    with pytest.raises(SystemExit):
        parse_config((_Options,), ["--unknown", "1"])


@pytest.mark.parametrize(
    "script", ["quickstart", "make_zoo", "convert_zoo", "pretrain", "predict_properties", "generate", "evaluate"]
)
def test_every_script_explains_its_options(script):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout and "--output_dir" in result.stdout
