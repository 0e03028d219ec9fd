"""Entry points: the README's main job runs, every command explains its options, configs reject typos."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sane_hf.cli import main_quickstart, parse_config


REPO = Path(__file__).resolve().parents[2]


def test_quickstart_runs_the_whole_pipeline_and_resumes(tmp_path, capsys):
    """The README's main job at its smoke size: every stage runs, REPORT.md holds both tables, a rerun skips all."""
    main_quickstart(["--output_dir", str(tmp_path), "--preset", "smoke"])
    out = capsys.readouterr().out
    assert "[5/5] generate: done" in out and "REPORT.md" in out
    report = (tmp_path / "REPORT.md").read_text()
    for fragment in ("## Property prediction", "| test_acc | r2 |", "## Generated models", "| generated (SANE) |"):
        assert fragment in report, fragment
    for image in ("predict/scatter_test_acc.png", "generated/evaluation.png"):
        assert f"]({image})" in report and (tmp_path / image).is_file()
    assert (tmp_path / "sane" / "model.safetensors").is_file()
    assert len(list((tmp_path / "generated").glob("model_*/model.safetensors"))) == 2
    assert json.loads((tmp_path / "zoo_ds" / "meta" / "info.json").read_text())["canonicalized"]
    state = json.loads((tmp_path / "quickstart_state.json").read_text())
    assert list(state["stages"]) == ["zoo", "convert", "pretrain", "predict", "generate"]

    for stage in ("zoo", "sane", "generated"):
        (tmp_path / stage / "left_by_the_first_run").write_text("")
    main_quickstart(["--output_dir", str(tmp_path), "--preset", "smoke"])
    assert capsys.readouterr().out.count("already complete, skipped") == 5
    # A changed option reruns its stage and everything after it, not the stages before; the rerun stages start
    # afresh (their folders held another run's work, e.g. step checkpoints a resume would adopt).
    main_quickstart(["--output_dir", str(tmp_path), "--preset", "smoke", "--pretrain_epochs", "2"])
    out = capsys.readouterr().out
    assert out.count("already complete, skipped") == 2 and "[3/5] pretrain: done" in out
    assert (tmp_path / "zoo" / "left_by_the_first_run").is_file()
    assert not (tmp_path / "sane" / "left_by_the_first_run").exists()
    assert not (tmp_path / "generated" / "left_by_the_first_run").exists()


def test_quickstart_config_rejects_bad_values():
    from sane_hf.quickstart import QuickstartConfig

    with pytest.raises(ValueError, match="preset"):
        QuickstartConfig(preset="huge")
    with pytest.raises(ValueError, match="zoo_models"):
        QuickstartConfig(zoo_models=0)


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


@pytest.mark.parametrize(("preset", "file"), [("default", "zoo_digits_cnn.yaml"), ("vit", "zoo_digits_vit.yaml")])
def test_quickstart_zoo_is_the_documented_zoo(preset, file):
    """The README's main job builds the zoo that scripts/configs/zoo_digits_cnn.yaml documents (same factors), and
    the transformer preset the one of zoo_digits_vit.yaml."""
    import yaml

    from sane_hf.quickstart import QuickstartConfig, stage_configs

    documented = yaml.safe_load((REPO / "scripts" / "configs" / file).read_text())
    quickstart = stage_configs(QuickstartConfig(preset=preset))["zoo"]
    for key, value in documented.items():
        if key != "output_dir":
            assert getattr(quickstart, key) == value, key


def test_quickstart_recipe_is_the_documented_pretraining_and_sampling():
    """The quality study's recipe lives in two places, the quickstart preset and the documented configs: they agree on
    every model and optimization option the preset sets (not on run control such as paths and logging)."""
    import yaml

    from sane_hf.quickstart import PRESETS

    configs = REPO / "scripts" / "configs"
    run_control = {"save_steps", "logging_steps", "finetune_epochs", "finetune_lr_grid", "num_threads"}
    for stage, file in (("pretrain", "pretrain_digits_cnn.yaml"), ("generate", "generate_digits_cnn.yaml")):
        documented = yaml.safe_load((configs / file).read_text())
        for key, value in PRESETS["default"][stage].items():
            if key not in run_control:
                assert documented.get(key) == value, (file, key)


@pytest.mark.parametrize("path", sorted((REPO / "scripts" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_into_its_command_config(path):
    from sane_hf.data import ConvertConfig, ZooConfig
    from sane_hf.generation.configs import GenerateConfig
    from sane_hf.probing.configs import PredictConfig
    from sane_hf.training.configs import PretrainConfig

    by_prefix = {
        "zoo": ZooConfig,
        "convert": ConvertConfig,
        "pretrain": PretrainConfig,
        "predict": PredictConfig,
        "generate": GenerateConfig,
    }
    config_class = by_prefix[path.name.split("_")[0]]
    # The same parsing (and validation) as the command; the paths inside need not exist for that.
    (config,) = parse_config((config_class,), ["--config", str(path)])
    assert isinstance(config, config_class)
