"""Tests of `SaneModel`: shapes, docs/method.md#model parameter counts and init, haloed windows, Hub-portable save/load
(the weight processor that travels with it: tests/tokenization/test_processing_sane.py)."""

import json
import math
import os
import textwrap
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel

from sane_hf.models.sane import (
    SaneConfig,
    SaneModel,
    SaneModelOutput,
    haloed_window_index,
)


TINY = {
    "token_size": 12,
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 2,
    "latent_dim": 8,
    "window_size": 16,
    "max_positions": [64, 8, 16],
}
# Tiny, but with a global position table long enough for whole "models" of up to 128 tokens.
TINY_LONG = {**TINY, "max_positions": [128, 8, 16]}


def make_positions(seq_len: int, batch_size: int | None = None) -> torch.Tensor:
    """Global index, a layer index that changes every 5 tokens and a row index within the layer."""
    index = torch.arange(seq_len)
    positions = torch.stack([index, (index // 5) % 8, index % 5], dim=-1)
    return positions if batch_size is None else positions.expand(batch_size, seq_len, 3).clone()


def make_model(seed: int = 0, **overrides) -> SaneModel:
    torch.manual_seed(seed)
    return SaneModel(SaneConfig(**{**TINY, **overrides})).eval()


@pytest.fixture(scope="module")
def model() -> SaneModel:
    return make_model()


@pytest.fixture(scope="module")
def long_model() -> SaneModel:
    return make_model(**TINY_LONG)


def expected_parameter_count(config: SaneConfig) -> int:
    """docs/method.md#model, generalized to `bias`, separate decoder depth and the projection pooling."""
    d, t, latent, p = config.d_model, config.token_size, config.latent_dim, config.projection_dim
    per_block = 12 * d * d + 2 * d  # qkv 3D^2, out-proj D^2, MLP 8D^2, two LayerNorm weights
    if config.bias:
        per_block += 3 * d + d + 4 * d + d + 2 * d  # linear biases and LayerNorm biases
    blocks = (config.n_layers + config.n_decoder_layers) * per_block
    projections = (t * d + d) + (d * t + t) + (d * latent + latent) + (latent * d + d)
    position_tables = sum(config.max_positions) * d // 2
    head_in = config.window_size * latent if config.projection_pooling == "flatten" else latent
    head = head_in * p + p * p + 4 * p  # two bias-free linears, two affine LayerNorms
    return blocks + projections + position_tables + head


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and outputs
# ---------------------------------------------------------------------------------------------------------------------


def test_encode_decode_forward_shapes(model):
    tokens, positions = torch.randn(3, 16, 12), make_positions(16, 3)
    latents = model.encode(tokens, positions)
    assert latents.shape == (3, 16, 8)
    assert model.decode(latents, positions).shape == (3, 16, 12)

    outputs = model(tokens, positions)
    assert isinstance(outputs, SaneModelOutput)
    assert list(outputs.keys()) == ["latents", "reconstructions", "projections"]
    assert outputs.latents.shape == (3, 16, 8)
    assert outputs.reconstructions.shape == (3, 16, 12)
    assert outputs.projections.shape == (3, 30)
    assert (outputs.projections >= 0).all()  # ends with a ReLU
    torch.testing.assert_close(outputs.latents, latents)
    torch.testing.assert_close(outputs.reconstructions, model.decode(latents, positions))

    as_tuple = model(tokens, positions, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    for value, expected in zip(as_tuple, outputs.to_tuple()):
        assert torch.equal(value, expected)


def test_positions_batch_of_one_is_broadcast(model):
    tokens = torch.randn(2, 16, 12)
    torch.testing.assert_close(
        model.encode(tokens, make_positions(16)[None]), model.encode(tokens, make_positions(16, 2))
    )


def test_flatten_head_is_tied_to_the_window_but_mean_head_is_not(model):
    shorter = torch.randn(2, 10, 12), make_positions(10, 2)
    assert model.encode(*shorter).shape == (2, 10, 8)  # encode/decode work for any window length
    with pytest.raises(ValueError, match=r"window of exactly config.window_size=16 tokens.*got a window of 10 tokens"):
        model(*shorter)
    mean_model = make_model(projection_pooling="mean")
    assert mean_model(*shorter).projections.shape == (2, 30)


def test_training_mode_with_dropout_runs_and_backpropagates():
    model = make_model(dropout=0.1).train()
    outputs = model(torch.randn(2, 16, 12), make_positions(16, 2))
    (outputs.reconstructions.square().mean() + outputs.projections.sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts and initialization (docs/method.md#model)
# ---------------------------------------------------------------------------------------------------------------------


def test_parameter_count_matches_original_cnn_config():
    config = SaneConfig(
        token_size=289,
        d_model=1024,
        n_heads=8,
        n_layers=8,
        latent_dim=128,
        max_positions=[100, 10, 40],
        window_size=64,
        bias=False,
    )
    with torch.device("meta"):  # 200 M parameters: count them without allocating or initializing
        model = SaneModel(config)
    parameters = list(model.parameters())
    assert sum(p.numel() for p in parameters) == expected_parameter_count(config) == 202_539_421
    # The split reported upstream: weight-decayed (>= 2-D) and non-decayed tensors.
    decayed = [p for p in parameters if p.ndim >= 2]
    assert (sum(p.numel() for p in decayed), len(decayed)) == (202_504_068, 73)
    assert (sum(p.numel() for p in parameters if p.ndim < 2), len(parameters) - len(decayed)) == (35_353, 40)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"bias": True}, {"n_decoder_layers": 3}, {"projection_pooling": "mean", "projection_dim": 7}],
)
def test_parameter_count_formula_tiny(overrides):
    config = SaneConfig(**{**TINY, **overrides})
    with torch.device("meta"):
        model = SaneModel(config)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(config)


def test_gpt2_style_initialization():
    model = make_model(d_model=128, n_layers=4, max_positions=[512, 8, 16])
    std = model.config.initializer_range
    residual_std = std / math.sqrt(2 * 4)
    for name, parameter in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert parameter.std().item() == pytest.approx(residual_std, rel=0.1), name
        elif name.endswith("c_attn.weight") or name.endswith("c_fc.weight") or "embedding" in name:
            assert parameter.std().item() == pytest.approx(std, rel=0.1), name
        elif ".ln_" in name or ".norm_" in name:
            expected = torch.ones_like(parameter) if name.endswith("weight") else torch.zeros_like(parameter)
            assert torch.equal(parameter, expected), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(parameter) == 0, name
    assert model.encoder[0].ln_1.bias is None  # bias=False: weight-only LayerNorms, as upstream


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coordinate", "value", "match"),
    [
        (0, 64, r"position coordinate 0 \(global token index\) reaches 64 but config.max_positions\[0\] is 64"),
        (1, 9, r"position coordinate 1 \(layer index\) reaches 9 but config.max_positions\[1\] is 8"),
        (2, 16, r"position coordinate 2 \(row index\) reaches 16 but config.max_positions\[2\] is 16"),
        (2, -1, r"position coordinate 2 \(row index\) has a negative value \(-1\)"),
    ],
)
def test_out_of_range_positions_raise(model, coordinate, value, match):
    positions = make_positions(16, 2)
    positions[1, 3, coordinate] = value
    with pytest.raises(ValueError, match=match):
        model.encode(torch.randn(2, 16, 12), positions)


def test_malformed_inputs_raise(model):
    tokens, positions = torch.randn(2, 16, 12), make_positions(16, 2)
    with pytest.raises(ValueError, match=r"`tokens` has last dimension 13 but config.token_size is 12"):
        model(torch.randn(2, 16, 13), positions)
    with pytest.raises(ValueError, match=r"`latents` has last dimension 12 but config.latent_dim is 8"):
        model.decode(tokens, positions)
    with pytest.raises(
        ValueError, match=r"`tokens` must have shape \(batch_size, window_length, token_size\).*\(16, 12\)"
    ):
        model.encode(tokens[0], positions[0])
    with pytest.raises(
        ValueError, match=r"`positions` must have shape \(batch_size, window_length, 3\).*\(2, 16, 2\)"
    ):
        model.encode(tokens, positions[..., :2])
    with pytest.raises(ValueError, match=r"`positions` of shape \(2, 15, 3\) does not match `tokens`"):
        model.encode(tokens, positions[:, :15])
    with pytest.raises(ValueError, match=r"`positions` of shape \(3, 16, 3\) does not match"):
        model.encode(tokens, make_positions(16, 3))
    with pytest.raises(ValueError, match=r"`positions` must be an integer tensor, got dtype torch.float32"):
        model.encode(tokens, positions.float())
    with pytest.raises(ValueError, match=r"`attention_mask` must have shape .* \(2, 16\), got \(2, 15\)"):
        model.encode(tokens, positions, attention_mask=torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int or None, got 0"):
        model.embed(tokens, positions, batch_size=0)


# ---------------------------------------------------------------------------------------------------------------------
# Attention mask
# ---------------------------------------------------------------------------------------------------------------------


def test_masked_tokens_do_not_influence_real_tokens():
    model = make_model(projection_pooling="mean")
    tokens, positions = torch.randn(2, 16, 12), make_positions(16, 2)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 11:] = False
    mask[1, ::3] = False
    changed = tokens.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), 12)

    reference = model(tokens, positions, attention_mask=mask)
    perturbed = model(changed, positions, attention_mask=mask)
    torch.testing.assert_close(reference.latents[mask], perturbed.latents[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(reference.reconstructions[mask], perturbed.reconstructions[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(reference.projections, perturbed.projections, atol=1e-6, rtol=0)
    # Without the mask the padding does change the real tokens (the check above is not vacuous).
    assert not torch.allclose(model.encode(tokens, positions)[mask], model.encode(changed, positions)[mask])
    # An all-True mask is the same as no mask.
    torch.testing.assert_close(
        model.encode(tokens, positions, torch.ones(2, 16, dtype=torch.bool)), model.encode(tokens, positions)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Haloed windows (docs/method.md#windows-and-halos, robust for every length)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_size", "halo_size"), [(8, 4), (8, 0), (5, 7), (1, 0), (1, 3), (16, 4), (6, 2)])
def test_haloed_window_index_covers_every_token_once(content_size, halo_size):
    for seq_len in range(1, 3 * content_size + 6):
        index, content = haloed_window_index(seq_len, content_size, halo_size)
        n_windows = math.ceil(seq_len / content_size)
        snippet_len = min(seq_len, content_size + 2 * halo_size)
        assert index.dtype == torch.long and content.dtype == torch.bool
        assert index.shape == content.shape == (n_windows, snippet_len), seq_len
        assert index.min() >= 0 and index.max() < seq_len
        # Snippets are contiguous ranges.
        assert torch.equal(index - index[:, :1], torch.arange(snippet_len).expand_as(index))
        # Every token is content of exactly one window, and window k owns [k * W_c, (k + 1) * W_c).
        counts = torch.bincount(index[content], minlength=seq_len)
        assert torch.equal(counts, torch.ones(seq_len, dtype=torch.long)), seq_len
        for k in range(n_windows):
            expected = torch.arange(k * content_size, min((k + 1) * content_size, seq_len))
            assert torch.equal(index[k][content[k]], expected)
            # Full halo context wherever the sequence has it.
            first, last = expected[0].item(), expected[-1].item()
            assert index[k, 0] <= max(0, first - halo_size) or snippet_len == seq_len
            assert index[k, -1] >= min(seq_len - 1, last + halo_size)


def test_haloed_window_index_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`seq_len` must be an int >= 1, got 0"):
        haloed_window_index(0, 8, 4)
    with pytest.raises(ValueError, match=r"`content_size` must be an int >= 1"):
        haloed_window_index(10, 0, 4)
    with pytest.raises(ValueError, match=r"`halo_size` must be an int >= 0"):
        haloed_window_index(10, 8, -1)


@pytest.mark.parametrize("seq_len", [1, 5, 15, 16])
def test_haloed_encode_equals_full_encode_when_sequence_fits_the_window(model, seq_len):
    tokens, positions = torch.randn(3, seq_len, 12), make_positions(seq_len, 3)
    with torch.no_grad():
        full = model.encode(tokens, positions)
    torch.testing.assert_close(model.haloed_encode(tokens, positions, batch_size=2), full, atol=1e-6, rtol=0)
    embedding, token_latents = model.embed(tokens, positions, return_token_latents=True)
    torch.testing.assert_close(token_latents, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding, full.mean(dim=1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seq_len", [17, 37, 40])
def test_haloed_encode_and_decode_use_each_windows_snippet(long_model, seq_len):
    # Longer than the window: each content token must come from encoding (decoding) exactly its window's snippet.
    config = long_model.config
    tokens, positions = torch.randn(2, seq_len, 12), make_positions(seq_len, 2)
    latents = long_model.haloed_encode(tokens, positions, batch_size=3)
    reconstructions = long_model.haloed_decode(latents, positions, batch_size=5)
    assert latents.shape == (2, seq_len, 8) and reconstructions.shape == (2, seq_len, 12)
    index, content = haloed_window_index(seq_len, config.content_size, config.halo_size)
    assert index.shape[1] == config.window_size
    with torch.no_grad():
        for k in range(index.shape[0]):
            snippet_latents = long_model.encode(tokens[:, index[k]], positions[:, index[k]])
            torch.testing.assert_close(
                latents[:, index[k][content[k]]], snippet_latents[:, content[k]], atol=1e-6, rtol=0
            )
            snippet_tokens = long_model.decode(latents[:, index[k]], positions[:, index[k]])
            torch.testing.assert_close(
                reconstructions[:, index[k][content[k]]], snippet_tokens[:, content[k]], atol=1e-6, rtol=0
            )


@pytest.mark.parametrize("seq_len", [1, 37, 93])
def test_embed_any_length(long_model, seq_len):
    tokens, positions = torch.randn(3, seq_len, 12), make_positions(seq_len)
    embeddings = long_model.embed(tokens, positions)
    assert embeddings.shape == (3, 8)
    assert not embeddings.requires_grad
    # Shared [S, 3] positions, per-sequence [B, S, 3] positions and the batch size give the same result.
    torch.testing.assert_close(long_model.embed(tokens, positions.expand(3, -1, -1), batch_size=1), embeddings)
    # Each sequence is embedded independently of the others in the batch.
    torch.testing.assert_close(long_model.embed(tokens[1:2], positions), embeddings[1:2], atol=1e-6, rtol=0)


def test_default_snippets_per_pass_bound_cpu_activations(long_model, monkeypatch):
    from sane_hf.models.sane import modeling_sane

    # Config (a) of the benchmarks: 256-token snippets at d_model 256 -> 8 snippets of 1 MB MLP activations each.
    config_a = SimpleNamespace(config=SimpleNamespace(d_model=256))
    assert SaneModel._snippets_per_pass(config_a, torch.device("cpu"), 256) == 8
    assert SaneModel._snippets_per_pass(config_a, torch.device("cpu"), 10**7) == 1
    assert SaneModel._snippets_per_pass(config_a, torch.device("cuda"), 256) == 64
    # The default sets how many snippets share a pass (here 2 of 16 tokens), never the result.
    monkeypatch.setattr(modeling_sane, "_CPU_PASS_ACTIVATIONS", 2 * 16 * 4 * 32)
    tokens, positions = torch.randn(2, 37, 12), make_positions(37)
    passes = []
    encode = long_model._encode
    monkeypatch.setattr(
        long_model, "_encode", lambda snippets, *args: passes.append(len(snippets)) or encode(snippets, *args)
    )
    default = long_model.haloed_encode(tokens, positions)
    num_snippets = sum(passes)  # 2 sequences x their windows
    assert passes == [2] * (num_snippets // 2) + [num_snippets % 2] * (num_snippets % 2)
    passes.clear()
    torch.testing.assert_close(default, long_model.haloed_encode(tokens, positions, batch_size=64))
    assert passes == [num_snippets]


@pytest.mark.parametrize("seq_len", [12, 40])  # one snippet per sequence, and haloed windows
def test_embed_under_bf16_autocast_returns_float32(long_model, seq_len):
    tokens = torch.randn(2, seq_len, TINY["token_size"], generator=torch.Generator().manual_seed(0))
    full = long_model.embed(tokens, make_positions(seq_len))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, token_latents = long_model.embed(tokens, make_positions(seq_len), return_token_latents=True)
        decoded = long_model.haloed_decode(token_latents, make_positions(seq_len))
    assert half.dtype == token_latents.dtype == decoded.dtype == torch.float32
    assert not torch.equal(half, full)  # bf16 was used: the rounding shows
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("chunk_elements", [2**20, 64])  # one chunk; one sample per chunk
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_bf16_attention_matches_float32_attention(monkeypatch, chunk_elements, masked):
    """bf16 attention on CPU (float32 flash kernel, chunked) against softmax(QK^T/sqrt(d))V written out in float64."""
    import sane_hf.models.sane.modeling_sane as modeling

    monkeypatch.setattr(modeling, "_ATTENTION_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 10, 8, generator=generator).bfloat16() for _ in range(3))
    grad = torch.randn(3, 2, 10, 8, generator=generator).bfloat16()
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 6:] = False
    mask[2, ..., :3] = False
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = modeling._attention(*leaves, mask if masked else None, 0.0)
    out.backward(grad)
    reference = [t.double().requires_grad_() for t in (q, k, v)]
    scores = reference[0] @ reference[1].transpose(-1, -2) / 8**0.5
    if masked:
        scores = scores.masked_fill(~mask, float("-inf"))
    expected = scores.softmax(-1) @ reference[2]
    expected.backward(grad.double())
    assert out.dtype == torch.bfloat16 and all(leaf.grad.dtype == torch.bfloat16 for leaf in leaves)
    torch.testing.assert_close(out.double(), expected, rtol=0.02, atol=0.02)
    for leaf, ref in zip(leaves, reference):
        torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=0.03, atol=0.03)


def test_embed_rejects_sequences_beyond_the_global_position_table(model):
    with pytest.raises(ValueError, match=r"reaches 92 but config.max_positions\[0\] is 64"):
        model.embed(torch.randn(1, 93, 12), make_positions(93))


# ---------------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained / Auto classes / trust_remote_code
# ---------------------------------------------------------------------------------------------------------------------


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_save_and_load_are_exact(tmp_path):
    model = make_model(seed=1, n_decoder_layers=3, bias=True)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    assert {"configuration_sane.py", "modeling_sane.py"} <= set(os.listdir(tmp_path))  # Hub-portable code
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["auto_map"] == {
        "AutoConfig": "configuration_sane.SaneConfig",
        "AutoModel": "modeling_sane.SaneModel",
    }

    loaded, info = SaneModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same_weights(model, loaded)
    # Loading records where the weights came from (`_name_or_path`) and their dtype; everything else is unchanged.
    ignored = ("_name_or_path", "dtype")
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in ignored} == {
        k: v for k, v in model.config.to_dict().items() if k not in ignored
    }


def test_auto_model_uses_the_registered_class(tmp_path):
    model = make_model(seed=2)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SaneModel
    assert_same_weights(model, loaded)


def test_trust_remote_code_without_sane_hf(tmp_path, run_without_sane_hf):
    model = make_model(seed=3)
    folder = tmp_path / "sane-tiny"
    model.save_pretrained(folder)
    tokens, positions = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(0)), make_positions(16, 2)
    torch.save({"tokens": tokens, "positions": positions}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from transformers import AutoModel

        model, info = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True, output_loading_info=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            outputs = model(inputs["tokens"], inputs["positions"])
            embedding = model.embed(torch.randn(1, 40, 12), inputs["positions"][0, :8].repeat(5, 1))
        torch.save({{"latents": outputs.latents, "reconstructions": outputs.reconstructions,
                    "projections": outputs.projections}}, {str(tmp_path / "outputs.pt")!r})
        print(json.dumps({{
            "class": type(model).__module__ + "." + type(model).__name__,
            "sane_hf_imported": any(
                module is not None and (name == "sane_hf" or name.startswith("sane_hf."))
                for name, module in sys.modules.items()
            ),
            "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            "checksum": {{k: float(v.double().sum()) for k, v in model.state_dict().items()}},
            "embedding_shape": list(embedding.shape),
        }}))
        """
    )
    report = json.loads(run_without_sane_hf(script).strip().splitlines()[-1])
    assert report["class"].startswith("transformers_modules.") and report["class"].endswith("modeling_sane.SaneModel")
    assert report["sane_hf_imported"] is False
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["embedding_shape"] == [1, 8]
    assert report["checksum"] == {k: float(v.double().sum()) for k, v in model.state_dict().items()}
    remote = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        local = model(tokens, positions)
    for key in ("latents", "reconstructions", "projections"):
        torch.testing.assert_close(remote[key], local[key], atol=0, rtol=0)
