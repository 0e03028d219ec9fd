"""The launcher decides what `accelerate` owns: `accelerate launch --mixed_precision` wins over an unset config field,
and `trainer_state.json` records the precision that ran; choice fields list their choices in `--help`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sane_hf.training.checkpoints import read_trainer_state
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import pretrain


REPO = Path(__file__).resolve().parents[2]
TINY_RUN = dict(d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8, batch_size=4, max_steps=2, epochs=1)


def _arguments(dataset: Path, output: Path, **overrides) -> list[str]:
    values = {"dataset": dataset, "output_dir": output, **TINY_RUN, "num_threads": 1, **overrides}
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def _run(command: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    # No user `accelerate config` file may decide for the test: its lookup goes to an empty HF_HOME.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(hf_home),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _launch_with_bf16(dataset: Path, output: Path, **overrides) -> dict:
    """`accelerate launch --mixed_precision bf16 scripts/pretrain.py ...` (CPU, one process); its trainer state."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    script = [str(REPO / "scripts" / "pretrain.py"), *_arguments(dataset, output, **overrides)]
    _run([*launch, "--mixed_precision", "bf16", *script], output.parent)
    return read_trainer_state(output)


def test_accelerate_launch_mixed_precision_wins_over_an_unset_config(mlp_zoo_dataset, tmp_path):
    assert PretrainConfig(dataset="x").mixed_precision is None  # unset: the launcher decides
    assert _launch_with_bf16(mlp_zoo_dataset, tmp_path / "bf16")["mixed_precision"] == "bf16"
    assert "| mixed precision | bf16 |" in (tmp_path / "bf16" / "README.md").read_text()

    # Without a launcher setting, fp32 ("no") runs and is recorded; a config value beats the launcher.
    output = tmp_path / "plain"
    pretrain(PretrainConfig(**TINY_RUN, dataset=str(mlp_zoo_dataset), output_dir=str(output), num_threads=1))
    assert read_trainer_state(output)["mixed_precision"] == "no"
    assert _launch_with_bf16(mlp_zoo_dataset, tmp_path / "no", mixed_precision="no")["mixed_precision"] == "no"


@pytest.mark.parametrize(
    ("script", "listed"),
    [
        ("pretrain.py", ["{no,bf16,fp16}", "{flatten,mean}", "--hub_private"]),
        ("convert_zoo.py", ["{auto,sane_hf,modelzoo,models}", "{standardize,none}", "--hub_private"]),
        (
            "generate.py",
            ["{token,original_token,original_individual,mixed,anchor_covariance}", "{train,val}", "--hub_private"],
        ),
    ],
)
def test_help_lists_the_choices_of_choice_fields_and_one_private_flag(script, listed, tmp_path):
    result = _run([sys.executable, str(REPO / "scripts" / script), "--help"], tmp_path)
    help_text = " ".join(result.stdout.split())
    for text in listed:
        assert text in help_text, text


def test_convert_private_is_a_deprecated_alias_of_hub_private():
    from sane_hf.data.configs import ConvertConfig

    assert ConvertConfig(zoo_dir="z", output_dir="o").hub_private is False
    with pytest.warns(FutureWarning, match="use `hub_private`"):
        config = ConvertConfig(zoo_dir="z", output_dir="o", private=True)
    assert config.hub_private is True and config.private is None
