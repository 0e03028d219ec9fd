"""The weight processor (`SaneProcessor`): checkpoints -> normalized tokens -> checkpoints, saved and loaded the
transformers way (preprocessor_config.json, AutoFeatureExtractor, trust_remote_code), and older checkpoints' sidecars.

By repo id through the Hub cache (and without `sane_hf`): tests/hub/test_hub_integration.py.
"""

import json
import os
import textwrap
from collections import OrderedDict

import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModel

from sane_hf import SaneConfig, SaneModel, SaneProcessor, TokenLayout, TokenNormalization
from sane_hf.tokenization.processing_sane import load_sane_processor


# Linear(4, 3) -> Linear(3, 2) at token width 4: layer 0 has 3 rows of 4 weights + 1 bias (2 tokens each, 3 padding
# values), layer 1 has 2 rows of 3 + 1 (1 token each, no padding): 8 tokens.
MEAN, STD = [0.5, -1.0], [2.0, 4.0]


def _net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def _processor() -> SaneProcessor:
    layout = TokenLayout.from_module(_net(0), token_size=4)
    return SaneProcessor(layout, TokenNormalization([layer.name for layer in layout.layers], MEAN, STD))


def _expected_tokens(net: torch.nn.Sequential) -> torch.Tensor:
    """The tokens of docs/method.md#tokenization and #normalization, written out by hand for this network."""
    state = net.state_dict()
    tokens = torch.zeros(8, 4)
    for row in range(3):
        values = (torch.cat([state["0.weight"][row], state["0.bias"][row : row + 1]]) - MEAN[0]) / STD[0]
        tokens[2 * row], tokens[2 * row + 1, 0] = values[:4], values[4]
    for row in range(2):
        tokens[6 + row] = (torch.cat([state["2.weight"][row], state["2.bias"][row : row + 1]]) - MEAN[1]) / STD[1]
    return tokens


def test_processor_tokenizes_and_normalizes_a_batch_of_checkpoints():
    processor, nets = _processor(), [_net(1), _net(2)]
    inputs = processor([nets[0].state_dict(), nets[1]])  # a state_dict or a module
    assert sorted(inputs) == ["positions", "tokens"]
    torch.testing.assert_close(inputs["tokens"], torch.stack([_expected_tokens(net) for net in nets]))
    positions = inputs["positions"]
    assert positions.shape == (2, 8, 3) and torch.equal(positions[0], positions[1])
    assert positions[0, :, 0].tolist() == list(range(8))  # global index
    assert positions[0, :, 1].tolist() == [0] * 6 + [1] * 2  # layer index
    assert positions[0, :, 2].tolist() == [0, 0, 1, 1, 2, 2, 0, 1]  # row index
    single = processor(nets[0].state_dict())  # one checkpoint: a batch of one
    torch.testing.assert_close(single["tokens"], inputs["tokens"][:1])


def test_decode_denormalizes_and_detokenizes_back_into_checkpoints():
    processor, nets = _processor(), [_net(1), _net(2)]
    tokens = torch.stack([_expected_tokens(net) for net in nets])
    tokens[0, 2 * 2 + 1, 1:] = 7.0  # padding values are ignored
    restored = processor.decode(tokens)
    assert isinstance(restored, list) and len(restored) == 2
    for net, state in zip(nets, restored):
        assert list(state) == list(net.state_dict())
        for key, value in net.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-6)
    one = processor.decode(tokens[1])
    assert set(one) == set(nets[1].state_dict()) and one["2.bias"].data_ptr() != tokens.data_ptr()
    _net(3).load_state_dict(restored[0])  # loads into a fresh network of the architecture


def test_processor_without_normalization_passes_tokens_through():
    net = _net(1)
    processor = SaneProcessor(TokenLayout.from_module(net, token_size=4))
    tokens = processor(net)["tokens"][0]
    assert torch.equal(tokens, processor.layout.tokenize(net.state_dict())[0])
    assert torch.equal(processor.decode(tokens)["0.weight"], net.state_dict()["0.weight"])


def test_processor_rejects_what_does_not_fit():
    processor = _processor()
    with pytest.raises(ValueError, match="does not match the token layout"):
        processor(torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict())
    with pytest.raises(ValueError, match=r"Expected tokens of shape \[\.\.\., 8, 4\]"):
        processor.decode(torch.zeros(7, 4))
    with pytest.raises(ValueError, match="non-empty list"):
        processor([])
    with pytest.raises(ValueError, match="PyTorch tensors only"):
        processor(_net(1), return_tensors="np")
    with pytest.raises(ValueError, match="Normalization does not match the token layout"):
        SaneProcessor(processor.layout, TokenNormalization(["other", "names"], MEAN, STD))


def test_save_and_load_the_transformers_way(tmp_path):
    processor = _processor()
    processor.save_pretrained(tmp_path / "repo" / "sub")
    folder = tmp_path / "repo" / "sub"
    assert {"preprocessor_config.json", "processing_sane.py", "layout.py", "normalization.py"} == set(
        os.listdir(folder)
    )
    config = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoFeatureExtractor": "processing_sane.SaneProcessor"}
    assert config["feature_extractor_type"] == "SaneProcessor"
    assert config["layout"] == processor.layout.to_dict()
    assert config["normalization"]["layers"]["0.weight"] == {"mean": MEAN[0], "std": STD[0]}
    for loaded in (
        AutoFeatureExtractor.from_pretrained(folder),  # registered by `import sane_hf`: no remote code
        SaneProcessor.from_pretrained(tmp_path / "repo", subfolder="sub"),
    ):
        assert type(loaded) is SaneProcessor
        assert loaded.layout == processor.layout and loaded.normalization == processor.normalization
    # The parts on their own, from the folder (or, like transformers, a subfolder of it) or the file.
    assert TokenLayout.from_pretrained(tmp_path / "repo", subfolder="sub") == processor.layout
    assert TokenNormalization.from_pretrained(folder / "preprocessor_config.json") == processor.normalization
    with pytest.raises(TypeError, match="Unknown option"):
        TokenLayout.from_pretrained(folder, revison="main")


def test_a_saved_processor_keeps_the_sequence_order_of_the_layers(tmp_path):
    """Layer names that do not sort in sequence order (`b` before `a`) normalize the same after a save and load."""
    net = torch.nn.Sequential(OrderedDict(b=torch.nn.Linear(4, 3), a=torch.nn.Linear(3, 2)))
    layout = TokenLayout.from_module(net, token_size=4)
    names = [layer.name for layer in layout.layers]
    assert names == ["b.weight", "a.weight"]
    SaneProcessor(layout, TokenNormalization(names, MEAN, STD)).save_pretrained(tmp_path)
    loaded = SaneProcessor.from_pretrained(tmp_path)
    assert loaded.normalization.layer_names == names and loaded.normalization.mean == MEAN
    first_row = torch.cat([net.b.weight[0], net.b.bias[:1]]).detach()
    torch.testing.assert_close(loaded(net)["tokens"][0, 0], (first_row[:4] - MEAN[0]) / STD[0])


def _old_checkpoint(folder, processor) -> SaneModel:
    """A SANE folder as saved before the processor existed: the layout and normalization as two JSON sidecars."""
    config = SaneConfig(token_size=4, d_model=16, n_heads=2, n_layers=1, latent_dim=4, window_size=8,
                        max_positions=[8, 2, 3])  # fmt: skip
    model = SaneModel(config)
    model.save_pretrained(folder)
    (folder / "sane_layout.json").write_text(json.dumps(processor.layout.to_dict(), indent=2))
    (folder / "sane_normalization.json").write_text(json.dumps(processor.normalization.to_dict(), indent=2))
    return model


def test_checkpoint_folders_saved_before_the_processor_still_load(tmp_path):
    processor = _processor()
    model = _old_checkpoint(tmp_path / "old", processor)
    assert not (tmp_path / "old" / "preprocessor_config.json").exists()
    loaded = AutoModel.from_pretrained(tmp_path / "old")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    for old in (SaneProcessor.from_pretrained(tmp_path / "old"), load_sane_processor(tmp_path / "old")):
        assert old.layout == processor.layout and old.normalization == processor.normalization
    assert TokenLayout.from_pretrained(tmp_path / "old") == processor.layout
    assert TokenNormalization.from_pretrained(tmp_path / "old") == processor.normalization
    # A SANE saved with neither: no processor, and a clear error when one is asked for.
    SaneModel(model.config).save_pretrained(tmp_path / "bare")
    assert load_sane_processor(tmp_path / "bare") is None
    with pytest.raises(OSError, match="neither preprocessor_config.json nor sane_layout.json"):
        SaneProcessor.from_pretrained(tmp_path / "bare")


def test_remote_code_processor_loads_where_sane_hf_cannot_be_imported(tmp_path, run_without_sane_hf):
    processor = _processor()
    folder = tmp_path / "sane-tiny"
    _old_checkpoint(folder, processor)
    processor.save_pretrained(folder)
    net = _net(5)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from transformers import AutoFeatureExtractor, AutoProcessor

        processor = AutoFeatureExtractor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        again = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        state = torch.load({str(tmp_path / "net.pt")!r}, weights_only=True)
        inputs = processor([state, state])
        restored = processor.decode(inputs["tokens"])[1]
        torch.save({{"tokens": inputs["tokens"], "restored": restored}}, {str(tmp_path / "out.pt")!r})
        print(json.dumps({{
            "classes": [type(p).__module__ + "." + type(p).__name__ for p in (processor, again)],
            "sane_hf_imported": any(name.startswith("sane_hf.") for name in sys.modules),
        }}))
        """
    )
    report = json.loads(run_without_sane_hf(script).strip().splitlines()[-1])
    for name in report["classes"]:
        assert name.startswith("transformers_modules.") and name.endswith("processing_sane.SaneProcessor")
    assert report["sane_hf_imported"] is False
    remote = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(remote["tokens"][0], _expected_tokens(net))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(remote["restored"][key], value, rtol=1e-6, atol=1e-6)
