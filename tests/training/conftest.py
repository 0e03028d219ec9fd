"""A tokenized zoo of tiny MLPs for the training tests (converted once per session)."""

from pathlib import Path
from unittest import mock

import pytest

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.training import loop as pretrain_loop


@pytest.fixture(scope="session")
def mlp_zoo_dataset(tmp_path_factory, zoo_tools) -> Path:
    """6 MLPs (16 -> 8 -> 4) with 4 checkpoints each, tokenized: 12 tokens of 17 values per checkpoint."""
    root = tmp_path_factory.mktemp("mlp_zoo")
    mlp = {"in_features": 16, "hidden_sizes": [8], "num_classes": 4}
    zoo = zoo_tools.write_sane_hf_zoo(root / "zoo", num_models=6, num_epochs=3, architecture="mlp", model_kwargs=mlp)
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(root / "zoo_ds"), seed=0), show_progress=False)
    return root / "zoo_ds"


@pytest.fixture
def killed_after_checkpoint():
    """`killed_after_checkpoint(step)`: a patch of `pretrain` under which the run raises `KeyboardInterrupt` (a kill)
    right after saving the step checkpoint `step`; the checkpoint itself is written as usual."""

    def patch(step: int):
        real_save = pretrain_loop._save_checkpoint

        def save_then_die(accelerator, output_dir, saved_step, limit, state, **kwargs):
            real_save(accelerator, output_dir, saved_step, limit, state, **kwargs)
            if saved_step == step:
                raise KeyboardInterrupt(f"simulated kill after the step-{step} checkpoint")

        return mock.patch.object(pretrain_loop, "_save_checkpoint", save_then_die)

    return patch
