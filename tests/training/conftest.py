"""A tokenized zoo of tiny MLPs for the training tests (converted once per session)."""

from pathlib import Path

import pytest

from sane_hf.data.hub_dataset import ConvertConfig, convert_zoo


@pytest.fixture(scope="session")
def mlp_zoo_dataset(tmp_path_factory, zoo_tools) -> Path:
    """6 MLPs (16 -> 8 -> 4) with 4 checkpoints each, tokenized: 12 tokens of 17 values per checkpoint."""
    root = tmp_path_factory.mktemp("mlp_zoo")
    mlp = {"in_features": 16, "hidden_sizes": [8], "num_classes": 4}
    zoo = zoo_tools.write_sane_hf_zoo(root / "zoo", num_models=6, num_epochs=3, architecture="mlp", model_kwargs=mlp)
    convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(root / "zoo_ds"), seed=0), show_progress=False)
    return root / "zoo_ds"
