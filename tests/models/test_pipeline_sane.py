"""The card's `pipeline_tag: feature-extraction` is true: `pipeline("feature-extraction", model=<SANE folder>,
trust_remote_code=True)` embeds checkpoints with the SANE and its weight processor, also where `sane_hf` cannot be
imported (pretraining declares the pipeline: tests/training/test_pretrain.py)."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import pipeline

from sane_hf import SaneConfig, SaneModel, SaneProcessor, TokenLayout, TokenNormalization
from sane_hf.models.sane import add_embedding_pipeline


def _net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@pytest.fixture(scope="module")
def sane_folder(tmp_path_factory):
    """A SANE saved as `sane-pretrain` saves it: weights, weight processor, embedding pipeline."""
    folder = tmp_path_factory.mktemp("sane")
    layout = TokenLayout.from_module(_net(0), token_size=4)
    normalization = TokenNormalization([layer.name for layer in layout.layers], [0.1, -0.2], [0.5, 2.0])
    config = SaneConfig(token_size=4, d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8,
                        max_positions=[8, 2, 3])  # fmt: skip
    torch.manual_seed(0)
    model = SaneModel(config).eval()
    add_embedding_pipeline(model, folder)
    model.save_pretrained(folder)
    SaneProcessor(layout, normalization).save_pretrained(folder)
    return {"folder": folder, "model": model, "layout": layout, "normalization": normalization}


def _expected_embedding(sane_folder, net) -> torch.Tensor:
    """Tokenize and normalize with the layout and normalization themselves, then `SaneModel.embed`."""
    layout, normalization = sane_folder["layout"], sane_folder["normalization"]
    tokens, _, positions = layout.tokenize(net.state_dict())
    return sane_folder["model"].embed(normalization.normalize(tokens, layout)[None], positions)[0]


def test_feature_extraction_pipeline_embeds_checkpoints_of_every_kind(sane_folder, tmp_path):
    config = json.loads((sane_folder["folder"] / "config.json").read_text())
    assert config["custom_pipelines"]["feature-extraction"]["impl"] == "pipeline_sane.SaneEmbeddingPipeline"
    embed = pipeline("feature-extraction", model=str(sane_folder["folder"]), trust_remote_code=True)
    nets = [_net(1), _net(2)]
    save_file(nets[0].state_dict(), tmp_path / "net.safetensors")
    (tmp_path / "folder").mkdir()
    save_file(nets[1].state_dict(), tmp_path / "folder" / "model.safetensors")
    expected = [_expected_embedding(sane_folder, net) for net in nets]
    torch.testing.assert_close(embed(str(tmp_path / "net.safetensors")), expected[0])
    torch.testing.assert_close(embed(tmp_path / "folder"), expected[1])
    for got, want in zip(embed([nets[0], nets[1].state_dict()]), expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(expected[0], expected[1])
    with pytest.raises(ValueError, match="expected a state_dict, an nn.Module or a path, got int"):
        embed(3)
    with pytest.raises(ValueError, match="expected a .safetensors checkpoint"):
        embed(str(tmp_path))
    with pytest.raises(ValueError, match="takes no options"):
        embed(nets[0], pooling="max")


def test_feature_extraction_pipeline_runs_where_sane_hf_cannot_be_imported(sane_folder, tmp_path, run_without_sane_hf):
    net = _net(3)
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import pipeline

        embed = pipeline("feature-extraction", model={str(sane_folder["folder"])!r}, trust_remote_code=True)
        torch.save({{"embedding": embed({str(tmp_path / "net.safetensors")!r}),
                    "classes": [type(embed).__module__, type(embed.feature_extractor).__module__]}},
                   {str(tmp_path / "out.pt")!r})
        """
    )
    run_without_sane_hf(script)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert all(name.startswith("transformers_modules.") for name in out["classes"]), out["classes"]
    torch.testing.assert_close(out["embedding"], _expected_embedding(sane_folder, net))
