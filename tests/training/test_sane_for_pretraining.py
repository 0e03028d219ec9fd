"""SaneForPreTraining: the model that returns the SANE loss, trained by `transformers.Trainer`, and the backbone's
transformers features (SDPA, gradient checkpointing, hidden states, clear errors for inputs it does not take)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining, Trainer, TrainingArguments

from sane_hf import SaneConfig, SaneForPreTraining, SaneModel
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.data.window_loaders import ZooCheckpointDataset
from sane_hf.data.zoo_permutations import build_permuter
from sane_hf.training import PretrainingCollator, make_two_views, sane_loss


CONFIG = dict(token_size=6, d_model=16, n_heads=2, n_layers=2, latent_dim=4, window_size=8, max_positions=[32, 8, 8])


def _positions(length: int) -> torch.Tensor:
    index = torch.arange(length)
    return torch.stack([index, index // 4, index % 4], dim=-1)


def _pairs(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two views per window: view 2 a noisy copy of view 1; the last two entries of every token are padding."""
    generator = torch.Generator().manual_seed(seed)
    view_1 = torch.randn(batch_size, 8, 6, generator=generator)
    view_2 = view_1 * (1 + 0.1 * torch.randn(view_1.shape, generator=generator))
    mask = torch.ones(batch_size, 2, 8, 6, dtype=torch.bool)
    mask[..., 4:] = False
    tokens = torch.where(mask, torch.stack([view_1, view_2], dim=1), 0)
    return {"tokens": tokens, "positions": _positions(8).expand(batch_size, 2, 8, 3), "mask": mask}


def _nt_xent_by_rows(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent written out row by row: -log(exp(s(a, partner)) / sum over b != a of exp(s(a, b)))."""
    rows = torch.nn.functional.normalize(torch.cat([z_i, z_j]).double(), dim=1)
    size = z_i.shape[0]
    total = 0.0
    for a in range(2 * size):
        similarity = rows[a] @ rows.T / temperature
        partner = (a + size) % (2 * size)
        others = torch.cat([similarity[:a], similarity[a + 1 :]])
        total += -(similarity[partner] - torch.logsumexp(others, dim=0))
    return total / (2 * size)


def test_loss_is_gamma_weighted_contrast_and_masked_reconstruction():
    torch.manual_seed(0)
    model = SaneForPreTraining(SaneConfig(**CONFIG, gamma=0.3, temperature=0.5)).eval()
    batch = _pairs()
    output = model(**batch)

    reconstructions, projections = output.reconstructions.double(), output.projections.double()
    mask, tokens = batch["mask"], batch["tokens"].double()
    # Mean squared error over real entries only (16 tokens x 4 real entries per view pair and sample).
    expected_recon = ((reconstructions - tokens)[mask] ** 2).sum() / mask.sum()
    expected_contrast = _nt_xent_by_rows(projections[:, 0], projections[:, 1], temperature=0.5)
    assert output.loss_recon.item() == pytest.approx(expected_recon.item(), rel=1e-5)
    assert output.loss_contrast.item() == pytest.approx(expected_contrast.item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(0.3 * expected_contrast.item() + 0.7 * expected_recon.item(), rel=1e-5)
    real = tokens[mask]
    expected_r2 = 1 - ((reconstructions - tokens)[mask] ** 2).sum() / ((real - real.mean()) ** 2).sum()
    assert output.r2.item() == pytest.approx(expected_r2.item(), rel=1e-4)
    # The backbone's outputs, view by view.
    backbone = model.sane(tokens=batch["tokens"][:, 1], positions=batch["positions"][:, 1])
    assert torch.equal(output.latents[:, 1], backbone.latents)
    assert torch.equal(output.projections[:, 1], backbone.projections)


def test_labels_are_the_reconstruction_targets():
    torch.manual_seed(0)
    model = SaneForPreTraining(SaneConfig(**CONFIG, gamma=0.0)).eval()
    batch = _pairs()
    targets = torch.zeros_like(batch["tokens"])
    output = model(**batch, labels=targets)
    expected = (output.reconstructions.double()[batch["mask"]] ** 2).mean()
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.loss_contrast.item() == 0.0


def test_pretraining_model_and_sane_loss_agree_exactly_and_share_the_backbone_weights(tmp_path):
    torch.manual_seed(1)
    backbone = SaneModel(SaneConfig(**CONFIG)).eval()
    backbone.save_pretrained(tmp_path / "backbone")
    model, info = AutoModelForPreTraining.from_pretrained(tmp_path / "backbone", output_loading_info=True)
    assert type(model) is SaneForPreTraining and not info["missing_keys"] and not info["unexpected_keys"]
    assert type(AutoModel.from_pretrained(tmp_path / "backbone")) is SaneModel

    batch = _pairs(seed=3)
    output = model.eval()(**batch)
    views = [
        {
            "tokens": batch["tokens"][:, index],
            "mask": batch["mask"][:, index],
            "positions": batch["positions"][:, index],
        }
        for index in (0, 1)
    ]
    outs = [backbone(tokens=view["tokens"], positions=view["positions"]) for view in views]
    expected = sane_loss(*outs, *views)
    for key in ("loss", "loss_recon", "loss_contrast", "r2"):
        assert torch.equal(output[key], expected[key]), key

    # A SaneForPreTraining checkpoint loads as the backbone that AutoModel returns.
    model.save_pretrained(tmp_path / "pretraining")
    reloaded = AutoModel.from_pretrained(tmp_path / "pretraining")
    assert type(reloaded) is SaneModel
    for key, value in backbone.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


@pytest.fixture(scope="module")
def tiny_zoo(mlp_zoo_dataset):
    return load_zoo_dataset(str(mlp_zoo_dataset))


def test_collator_builds_the_two_views_of_make_two_views(tiny_zoo):
    dataset = ZooCheckpointDataset(tiny_zoo.splits["train"])
    permuter = build_permuter(tiny_zoo)
    collator = PretrainingCollator(
        tiny_zoo.layout, window_size=8, permuter=permuter, denoise=True, generator=torch.Generator().manual_seed(4)
    )
    items = [dataset[i] for i in range(3)]
    batch = collator(items)
    assert set(batch) == {"tokens", "positions", "mask", "labels"}

    # The same draws by hand: window starts, then the two views.
    generator = torch.Generator().manual_seed(4)
    full = torch.stack([item["tokens"] for item in items])
    starts = torch.randint(0, tiny_zoo.layout.num_tokens - 8 + 1, (3,), generator=generator)
    window = torch.stack([full[b, s : s + 8] for b, s in enumerate(starts.tolist())])
    windows = {
        "tokens": window,
        "mask": torch.stack([tiny_zoo.layout.mask[s : s + 8] for s in starts.tolist()]),
        "positions": torch.stack([tiny_zoo.layout.positions[s : s + 8] for s in starts.tolist()]),
        "start": starts,
        "full_tokens": full,
    }
    view_1, view_2 = make_two_views(windows, permuter, generator=generator)
    assert torch.equal(batch["tokens"], torch.stack([view_1["tokens"], view_2["tokens"]], dim=1))
    assert torch.equal(batch["labels"], torch.stack([view_1["clean_tokens"], view_2["clean_tokens"]], dim=1))
    assert torch.equal(batch["labels"][:, 0], window)  # view 1 is canonical
    assert not torch.equal(batch["labels"][:, 1], window)  # view 2 is permuted
    assert torch.equal(batch["mask"][:, 1], windows["mask"])
    assert torch.equal(batch["positions"][:, 0], windows["positions"])


def test_trainer_trains_sane_for_pretraining_and_the_loss_falls(tiny_zoo, tmp_path):
    torch.manual_seed(0)
    config = SaneConfig(
        token_size=tiny_zoo.layout.token_size,
        d_model=32,
        n_heads=2,
        n_layers=1,
        latent_dim=8,
        window_size=8,
        max_positions=[max(bound, 8) for bound in tiny_zoo.layout.max_positions],
    )
    model = SaneForPreTraining(config)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        max_steps=160,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ZooCheckpointDataset(tiny_zoo.splits["train"]),
        data_collator=PretrainingCollator(tiny_zoo.layout, window_size=8, permuter=build_permuter(tiny_zoo)),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 160
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, losses


def _backbone_gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    model = SaneForPreTraining(SaneConfig(**CONFIG, dropout=0.0))
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model(**_pairs()).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = _backbone_gradients(checkpointing=False)
    checkpointed = _backbone_gradients(checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-7, rtol=1e-5), name


def test_gradient_checkpointing_recomputes_the_blocks():
    """Checkpointing is real: every block runs twice per training step (forward, then again in backward)."""
    torch.manual_seed(2)
    model = SaneForPreTraining(SaneConfig(**CONFIG))
    calls = []
    for block in (*model.sane.encoder, *model.sane.decoder):
        # A hook inside the block: the block's own hooks stay outside the checkpoint, and the recompute stops as soon
        # as it has every saved tensor, before the MLP module returns.
        block.mlp.c_fc.register_forward_hook(lambda module, args, output: calls.append(module))
    model.gradient_checkpointing_enable()
    model.train()
    model(**_pairs()).loss.backward()
    assert len(calls) == 2 * (CONFIG["n_layers"] * 2)


def test_sdpa_is_declared_and_accepted(tmp_path):
    SaneModel(SaneConfig(**CONFIG)).save_pretrained(tmp_path)
    model = SaneModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert (
        AutoModel.from_config(SaneConfig(**CONFIG), attn_implementation="sdpa").config._attn_implementation == "sdpa"
    )


def test_output_hidden_states_are_the_per_block_states():
    torch.manual_seed(0)
    model = SaneModel(SaneConfig(**CONFIG, n_decoder_layers=3)).eval()
    tokens, positions = torch.randn(2, 8, 6), _positions(8).expand(2, 8, 3)
    output = model(tokens, positions, output_hidden_states=True)
    assert len(output.encoder_hidden_states) == 3 and len(output.decoder_hidden_states) == 4
    # Recompute the chain block by block: embedding, then each block's output.
    hidden = model.input_projection(tokens) + model.position_embedding(positions)
    assert torch.equal(output.encoder_hidden_states[0], hidden)
    for index, block in enumerate(model.encoder):
        hidden = block(hidden)
        assert torch.equal(output.encoder_hidden_states[index + 1], hidden)
    assert torch.equal(model.to_latent(hidden), output.latents)
    assert torch.equal(model.output_projection(output.decoder_hidden_states[-1]), output.reconstructions)
    assert model(tokens, positions).encoder_hidden_states is None
    pairs = SaneForPreTraining(SaneConfig(**CONFIG))(**_pairs(), output_hidden_states=True)
    assert pairs.encoder_hidden_states[-1].shape == (4, 2, 8, 16)


def test_output_attentions_are_each_blocks_softmax_weights():
    """Weights recomputed here from the block's input and its fused QKV weights, in float64, with a padded key."""
    torch.manual_seed(0)
    model = SaneModel(SaneConfig(**CONFIG)).eval()
    tokens, positions = torch.randn(2, 8, 6), _positions(8).expand(2, 8, 3)
    attention_mask = torch.ones(2, 8, dtype=torch.bool)
    attention_mask[1, 6:] = False
    output = model(tokens, positions, attention_mask, output_attentions=True, output_hidden_states=True)
    fused = model(tokens, positions, attention_mask)  # the SDPA kernel
    torch.testing.assert_close(output.latents, fused.latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(output.reconstructions, fused.reconstructions, rtol=0, atol=1e-5)
    assert len(output.encoder_attentions) == len(output.decoder_attentions) == CONFIG["n_layers"]
    heads, head_dim = CONFIG["n_heads"], CONFIG["d_model"] // CONFIG["n_heads"]
    for blocks, states, attentions in (
        (model.encoder, output.encoder_hidden_states, output.encoder_attentions),
        (model.decoder, output.decoder_hidden_states, output.decoder_attentions),
    ):
        for block, hidden, weights in zip(blocks, states, attentions):
            normed = block.ln_1(hidden).double()
            query, key, _ = (normed @ block.attn.c_attn.weight.double().T).split(CONFIG["d_model"], dim=2)
            if block.attn.c_attn.bias is not None:
                query = query + block.attn.c_attn.bias[: CONFIG["d_model"]].double()
                key = key + block.attn.c_attn.bias[CONFIG["d_model"] : 2 * CONFIG["d_model"]].double()
            for head in range(heads):
                dims = slice(head * head_dim, (head + 1) * head_dim)
                scores = query[..., dims] @ key[..., dims].transpose(1, 2) / head_dim**0.5
                scores = scores.masked_fill(~attention_mask[:, None, :], float("-inf"))
                torch.testing.assert_close(weights[:, head].double(), scores.softmax(-1), rtol=0, atol=1e-5)
            assert weights.shape == (2, heads, 8, 8) and bool((weights[1, :, :, 6:] == 0).all())
    assert model(tokens, positions).encoder_attentions is None
    pairs = SaneForPreTraining(SaneConfig(**CONFIG))(**_pairs(), output_attentions=True)
    assert pairs.decoder_attentions[-1].shape == (4, 2, heads, 8, 8)


def test_eager_attention_implementation_gives_the_sdpa_outputs(tmp_path, monkeypatch):
    from sane_hf.models.sane import modeling_sane

    torch.manual_seed(0)
    SaneModel(SaneConfig(**CONFIG)).save_pretrained(tmp_path)
    tokens, positions = torch.randn(2, 8, 6), _positions(8).expand(2, 8, 3)
    eager = SaneModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = SaneModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager"
    expected = sdpa(tokens, positions).latents

    def no_kernel(*args, **kwargs):
        raise AssertionError("attn_implementation='eager' called the SDPA kernel")

    monkeypatch.setattr(modeling_sane.F, "scaled_dot_product_attention", no_kernel)
    torch.testing.assert_close(eager(tokens, positions).latents, expected, rtol=0, atol=1e-5)


def test_inputs_the_model_does_not_take_raise_a_clear_error():
    model = SaneModel(SaneConfig(**CONFIG))
    tokens, positions = torch.randn(2, 8, 6), _positions(8).expand(2, 8, 3)
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['labels'\].*SaneForPreTraining"):
        model(tokens, positions, labels=tokens)
    with pytest.raises(ValueError, match=r"\['mask'\].*only serves the loss"):
        model(tokens=tokens, positions=positions, mask=torch.ones_like(tokens, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"SaneForPreTraining.forward got unexpected argument\(s\) \['start'\]"):
        SaneForPreTraining(SaneConfig(**CONFIG))(**_pairs(), start=torch.zeros(4))
    with pytest.raises(ValueError, match=r"two views of every window"):
        SaneForPreTraining(SaneConfig(**CONFIG))(tokens=tokens, positions=positions)


def test_pretraining_model_loads_with_trust_remote_code_without_sane_hf(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import textwrap

    SaneForPreTraining(SaneConfig(**CONFIG)).save_pretrained(tmp_path / "sane")
    assert json.loads((tmp_path / "sane" / "config.json").read_text())["auto_map"]["AutoModelForPreTraining"] == (
        "modeling_sane.SaneForPreTraining"
    )
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from transformers import AutoModelForPreTraining

        model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "sane")!r}, trust_remote_code=True)
        index = torch.arange(8)
        positions = torch.stack([index, index // 4, index % 4], dim=-1).expand(4, 2, 8, 3)
        loss = model(tokens=torch.randn(4, 2, 8, 6), positions=positions).loss
        loss.backward()
        print("LOSS_FINITE", bool(torch.isfinite(loss)))
        print("SANE_HF_IMPORTED", any(m.split(".")[0] == "sane_hf" for m in sys.modules))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=Path(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOSS_FINITE True" in result.stdout and "SANE_HF_IMPORTED False" in result.stdout
