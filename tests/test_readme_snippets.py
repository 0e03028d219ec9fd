"""The README's Python snippets that work on a tokenized zoo run verbatim, on a tiny zoo in `runs/`."""

import re
from pathlib import Path

import pytest

from sane_hf import SaneConfig, SaneModel, SaneProcessor
from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.models.sane import add_embedding_pipeline


REPO = Path(__file__).resolve().parents[1]


def _zoo_snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    return [block for block in blocks if "runs/zoo_ds" in block]


def test_the_readme_has_zoo_snippets():
    snippets = _zoo_snippets()
    assert len(snippets) >= 2
    assert any("SaneForPreTraining" in snippet for snippet in snippets)
    assert any("processor.decode" in snippet for snippet in snippets)


@pytest.mark.parametrize("index", range(len(_zoo_snippets())))
def test_readme_zoo_snippet_runs_verbatim(index, tmp_path_factory, zoo_tools, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "readme_runs"
    if not (root / "runs" / "sane").exists():
        mlp = {"in_features": 16, "hidden_sizes": [8], "num_classes": 4}
        # 12 models x 4 checkpoints: 32 in the train split, one full batch of the snippet's batch_size=32.
        zoo = zoo_tools.write_sane_hf_zoo(
            root / "zoo", num_models=12, num_epochs=3, architecture="mlp", model_kwargs=mlp
        )
        dataset = root / "runs" / "zoo_ds"
        convert_zoo(ConvertConfig(zoo_dir=str(zoo), output_dir=str(dataset), seed=0), show_progress=False)
        zoo = load_zoo_dataset(str(dataset))
        layout = zoo.layout
        config = SaneConfig(
            token_size=layout.token_size,
            d_model=16,
            n_heads=2,
            n_layers=1,
            latent_dim=4,
            window_size=8,
            max_positions=[max(bound, 8) for bound in layout.max_positions],
        )
        sane = SaneModel(config)
        add_embedding_pipeline(sane, root / "runs" / "sane")
        sane.save_pretrained(root / "runs" / "sane")
        SaneProcessor(layout, zoo.normalization).save_pretrained(root / "runs" / "sane")  # as sane-pretrain saves
    monkeypatch.chdir(root)
    exec(compile(_zoo_snippets()[index], f"README.md python snippet {index}", "exec"), {})
