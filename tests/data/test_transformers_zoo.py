"""A zoo of transformers models (model folders): conversion cuts GPT-2's Conv1D weights into rows of output channels,
tokenizes its tied LM head once, and pretraining on it says how to go on without permutation augmentation."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.training.configs import PretrainConfig
from sane_hf.training.loop import pretrain


@pytest.fixture(scope="module")
def gpt2_zoo(tmp_path_factory):
    """Four tiny random GPT-2 folders whose weights are a pickle holding the tied LM head and embedding as one tensor
    (as `torch.save(model.state_dict())` writes them), and their state_dicts."""
    root = tmp_path_factory.mktemp("gpt2_zoo")
    state_dicts = {}
    for index in range(4):
        torch.manual_seed(index)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=12, n_embd=16, n_layer=1, n_head=2))
        folder = root / "zoo" / f"gpt2_{index}"
        model.save_pretrained(folder)  # config.json with `architectures: [GPT2LMHeadModel]`
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "properties.json").write_text(json.dumps({"test_acc": 0.1 * index}))
        state_dicts[folder.name] = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = root / "zoo_ds"
    convert_zoo(
        ConvertConfig(zoo_dir=str(root / "zoo"), zoo_format="models", output_dir=str(dataset), token_size=16, seed=0),
        show_progress=False,
    )
    return {"root": root, "dataset": dataset, "state_dicts": state_dicts}


def test_gpt2_zoo_converts_with_output_channel_rows_and_one_copy_of_tied_weights(gpt2_zoo):
    zoo = load_zoo_dataset(gpt2_zoo["dataset"])
    layout = zoo.layout
    assert zoo.info.architecture == "gpt2" and not zoo.info.canonicalized  # no permutation spec for transformers
    assert layout.tied == {"lm_head.weight": "transformer.wte.weight"}
    c_attn = next(layer for layer in layout.layers if layer.weight_key == "transformer.h.0.attn.c_attn.weight")
    assert c_attn.transposed and c_attn.num_rows == 3 * 16  # [in=16, out=48]: 48 output channels
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=12, n_embd=16, n_layer=1, n_head=2))
    assert layout.num_values == sum(p.numel() for p in model.parameters())
    # Every stored row de-normalizes and detokenizes back to its member's weights (the tied head included).
    for split in zoo.splits.values():
        for row in split:
            restored = layout.detokenize(zoo.normalization.denormalize(torch.as_tensor(row["tokens"]), layout))
            for key, value in gpt2_zoo["state_dicts"][row["model_id"]].items():
                torch.testing.assert_close(restored[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_pretraining_a_transformers_zoo_names_the_way_on(gpt2_zoo, tmp_path):
    tiny_sane = dict(d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8)
    run = dict(dataset=str(gpt2_zoo["dataset"]), output_dir=str(tmp_path / "sane"), batch_size=2, max_steps=2)
    values = {**tiny_sane, **run, "num_threads": 1}
    with pytest.raises(ValueError, match="Unknown zoo architecture 'gpt2'.*--permutation_augmentation false"):
        pretrain(PretrainConfig(**values))
    output = pretrain(PretrainConfig(**values, permutation_augmentation=False))
    assert (output / "model.safetensors").is_file()
