"""SANE embeddings of whole models (docs/method.md#probes): haloed windows vs. full attention, every length, poolings."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sane_hf.data.configs import ConvertConfig
from sane_hf.data.convert import convert_zoo
from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.models.sane import SaneConfig, SaneModel
from sane_hf.probing.embed import POOLINGS, embed_zoo, layer_pooling_matrix, pool_token_latents, read_columns
from sane_hf.probing.finetune import SaneForPropertyPrediction
from sane_hf.zoo_models import build_zoo_model


MLP_KWARGS = {"in_features": 6, "hidden_sizes": [5], "num_classes": 3}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_sane(token_size=7, window_size=8, halo_size=2, latent_dim=4, max_tokens=64) -> SaneModel:
    torch.manual_seed(0)
    config = SaneConfig(
        token_size=token_size,
        d_model=16,
        n_heads=2,
        n_layers=2,
        latent_dim=latent_dim,
        window_size=window_size,
        halo_size=halo_size,
        max_positions=[max_tokens, 8, 16],
    )
    return SaneModel(config).eval()


def _positions(seq_len: int) -> torch.Tensor:
    index = torch.arange(seq_len)
    return torch.stack([index, index // 5, index % 5], dim=-1)


def test_embed_equals_full_attention_when_the_window_covers_the_sequence():
    model = _tiny_sane()
    for seq_len in (1, 5, 8):  # S <= window_size: one pass over the whole sequence
        tokens = torch.randn(3, seq_len, 7)
        positions = _positions(seq_len)
        full = model.encode(tokens, positions.expand(3, -1, -1)).mean(dim=1)
        torch.testing.assert_close(model.embed(tokens, positions), full, rtol=0, atol=1e-6)


def test_every_length_from_one_to_three_windows():
    model = _tiny_sane()
    head = SaneForPropertyPrediction(model, num_targets=2).eval()
    for seq_len in range(1, 3 * model.config.window_size + 1):
        tokens = torch.randn(2, seq_len, 7)
        positions = _positions(seq_len)
        embedding, token_latents = model.embed(tokens, positions, batch_size=3, return_token_latents=True)
        assert embedding.shape == (2, 4) and token_latents.shape == (2, seq_len, 4)
        assert torch.isfinite(token_latents).all()
        torch.testing.assert_close(embedding, token_latents.mean(dim=1))
        # The differentiable haloed pooling of the fine-tuning model gives the same embedding.
        torch.testing.assert_close(head.pooled_latents(tokens, positions), embedding, rtol=1e-5, atol=1e-6)


def test_pooling_variants():
    token_latents = torch.randn(2, 5, 3)
    token_layer = torch.tensor([0, 0, 0, 1, 1])
    matrix = layer_pooling_matrix(token_layer)
    layers = pool_token_latents(token_latents, matrix, "layers").reshape(2, 2, 3)
    torch.testing.assert_close(layers[:, 0], token_latents[:, :3].mean(dim=1))
    torch.testing.assert_close(layers[:, 1], token_latents[:, 3:].mean(dim=1))
    assert pool_token_latents(token_latents, matrix, "mean+layers").shape == (2, 9)
    torch.testing.assert_close(pool_token_latents(token_latents, matrix, "concat"), token_latents.reshape(2, 15))
    # stats: per layer, the mean and the population standard deviation of each latent dimension.
    stats = pool_token_latents(token_latents, matrix, "stats").reshape(2, 2, 2, 3)
    for layer, tokens_of_layer in ((0, slice(0, 3)), (1, slice(3, 5))):
        torch.testing.assert_close(stats[:, layer, 0], token_latents[:, tokens_of_layer].mean(dim=1))
        torch.testing.assert_close(stats[:, layer, 1], token_latents[:, tokens_of_layer].std(dim=1, correction=0))
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        pool_token_latents(token_latents, matrix, "max")


def test_stats_pooling_of_a_one_token_layer_has_zero_spread_and_a_finite_gradient():
    """A ViT's [CLS] token is a layer of one token: its spread is 0 and the gradient through it is finite (sqrt's
    infinite slope at 0 made the fine-tuned probe's loss NaN on the transformer zoo)."""
    token_latents = torch.randn(2, 4, 3, requires_grad=True)
    matrix = layer_pooling_matrix(torch.tensor([0, 1, 1, 1]))
    stats = pool_token_latents(token_latents, matrix, "stats").reshape(2, 2, 2, 3)
    assert torch.equal(stats[:, 0, 1], torch.zeros(2, 3))
    torch.testing.assert_close(stats[:, 1, 1], token_latents[:, 1:].std(dim=1, correction=0))
    (gradient,) = torch.autograd.grad(stats[:, :, 1].sum(), token_latents)
    assert torch.isfinite(gradient).all() and torch.equal(gradient[:, 0], torch.zeros(2, 3))
    # Elsewhere it is torch.std's gradient.
    (expected,) = torch.autograd.grad(token_latents[:, 1:].std(dim=1, correction=0).sum(), token_latents)
    torch.testing.assert_close(gradient[:, 1:], expected[:, 1:])


def test_finetuned_stats_pooling_matches_the_probe_features_at_every_length():
    """The differentiable haloed `stats` pooling of the fine-tuning model equals the probe's `stats` features of the
    (no-grad) haloed token latents, for sequences of one to three windows, and passes gradients to the encoder."""
    model = _tiny_sane()
    for seq_len in (3, model.config.window_size + 1, 3 * model.config.window_size):
        positions = _positions(seq_len)
        head = SaneForPropertyPrediction(model, num_targets=1, pooling="stats", token_layer=positions[:, 1]).eval()
        tokens = torch.randn(2, seq_len, 7)
        _, token_latents = model.embed(tokens, positions, batch_size=3, return_token_latents=True)
        expected = pool_token_latents(token_latents, layer_pooling_matrix(positions[:, 1]), "stats")
        torch.testing.assert_close(head.pooled_latents(tokens, positions), expected, rtol=1e-5, atol=1e-6)
    head(tokens, positions).sum().backward()
    assert model.encoder[0].attn.c_attn.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs `token_layer`"):
        SaneForPropertyPrediction(model, num_targets=1, pooling="stats")


def _write_zoo(root: Path, num_models: int = 8, num_epochs: int = 2) -> Path:
    """A tiny zoo in sane_hf's own format: MLPs whose weights drift with the epoch."""
    (root / "models").mkdir(parents=True)
    task = {"name": "synthetic", "num_classes": 3}
    (root / "zoo_config.json").write_text(json.dumps({"format": "sane_hf-zoo", "format_version": 1, "task": task}))
    for index in range(num_models):
        folder = root / "models" / f"model_{index:04d}"
        (folder / "checkpoints").mkdir(parents=True)
        torch.manual_seed(index)
        base = build_zoo_model("mlp", **MLP_KWARGS).state_dict()
        params = {"model_id": folder.name, "architecture": "mlp", "model_kwargs": MLP_KWARGS, "seed": index}
        (folder / "params.json").write_text(json.dumps(params))
        lines = []
        for epoch in range(num_epochs + 1):
            state = {k: (v * (1 + 0.3 * epoch)).contiguous() for k, v in base.items()}
            save_file(state, str(folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors"))
            accuracy = 0.3 + 0.1 * epoch + 0.02 * index
            lines.append(json.dumps({"epoch": epoch, "test_acc": accuracy, "train_acc": accuracy + 0.01}))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "DONE").write_text("{}")
    return root


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    output = root / "zoo_ds"
    convert_zoo(
        ConvertConfig(zoo_dir=str(_write_zoo(root / "zoo")), output_dir=str(output), token_size=7, seed=0),
        show_progress=False,
    )
    return load_zoo_dataset(output)


def test_embed_zoo_gives_every_pooling_from_one_pass(tiny_zoo):
    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    split = tiny_zoo.splits["train"]
    out = embed_zoo(model, split, layout, batch_size=5, pooling=list(POOLINGS), properties=["test_acc", "epoch"])
    n, latent = split.num_rows, model.config.latent_dim
    assert out["embeddings"].shape == (n, latent)
    assert out["layer_embeddings"].shape == (n, layout.num_layers, latent)
    assert out["features"]["mean"].shape == (n, latent)
    assert out["features"]["layers"].shape == (n, layout.num_layers * latent)
    assert out["features"]["mean+layers"].shape == (n, (1 + layout.num_layers) * latent)
    assert out["features"]["concat"].shape == (n, layout.num_tokens * latent)
    # Against the model applied to the whole split at once.
    tokens = torch.stack([split[i]["tokens"] for i in range(n)])
    expected, token_latents = model.embed(tokens, layout.positions, return_token_latents=True)
    torch.testing.assert_close(out["embeddings"], expected)
    torch.testing.assert_close(out["features"]["concat"], token_latents.reshape(n, -1))
    counts = torch.bincount(layout.token_layer).float()
    weighted = (out["layer_embeddings"] * counts[None, :, None]).sum(dim=1) / counts.sum()
    torch.testing.assert_close(weighted, out["embeddings"], rtol=1e-5, atol=1e-6)
    columns = read_columns(split, ["test_acc", "epoch"])
    assert out["targets"]["epoch"].tolist() == columns["epoch"].tolist()
    # A subset of rows, in the given order.
    subset = embed_zoo(model, split, layout, rows=[3, 0], properties=["epoch"])
    torch.testing.assert_close(subset["embeddings"], expected[[3, 0]])
    assert subset["targets"]["epoch"].tolist() == columns["epoch"][[3, 0]].tolist()


def test_embed_zoo_of_a_streamed_split_equals_the_in_memory_split(tiny_zoo):
    """A streamed split (`load_zoo_dataset(..., streaming=True)`) is embedded in stream order, in batches: the same
    embeddings as the model applied to the stored rows at once, and the same property values as the stored columns
    (numbers, strings, bools)."""
    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    split = tiny_zoo.splits["train"]
    streamed = load_zoo_dataset(tiny_zoo.root, streaming=True).splits["train"]
    names = [name for name in split.column_names if name not in ("tokens", "model_id")]
    out = embed_zoo(model, streamed, layout, batch_size=4, pooling=["mean", "stats"], properties=names)
    tokens = torch.stack([split[i]["tokens"] for i in range(split.num_rows)])
    expected, token_latents = model.embed(tokens, layout.positions, return_token_latents=True)
    torch.testing.assert_close(out["embeddings"], expected)
    pooling = layer_pooling_matrix(layout.token_layer, layout.num_layers)
    torch.testing.assert_close(out["features"]["stats"], pool_token_latents(token_latents, pooling, "stats"))
    assert out["rows"].tolist() == list(range(split.num_rows))
    columns = read_columns(split, names)
    assert sorted(out["targets"]) == sorted(names)
    for name in names:
        assert out["targets"][name].dtype == columns[name].dtype, name
        assert out["targets"][name].tolist() == columns[name].tolist(), name
    with pytest.raises(ValueError, match="`rows` needs an in-memory split"):
        embed_zoo(model, streamed, layout, rows=[0, 1])


def test_embed_zoo_bf16_and_errors(tiny_zoo):
    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    split = tiny_zoo.splits["test"]
    full = embed_zoo(model, split, layout)["embeddings"]
    half = embed_zoo(model, split, layout, precision="bf16")["embeddings"]
    assert half.dtype == torch.float32
    # bf16 keeps about 3 significant digits: the same points up to a small relative error, not zeros or a constant
    # (elementwise tolerances of 0.1 on values below 0.1 passed for all-zero embeddings).
    assert full.std(dim=0).min() > 0
    assert ((half - full).norm() / full.norm()).item() < 0.02
    centred_half, centred_full = half - half.mean(dim=0), full - full.mean(dim=0)
    cosine = (centred_half * centred_full).sum() / (centred_half.norm() * centred_full.norm())
    assert cosine.item() > 0.99
    assert not torch.equal(half, full)  # and bf16 was used: the rounding shows
    wrong = _tiny_sane(token_size=layout.token_size + 1, max_tokens=layout.num_tokens)
    with pytest.raises(ValueError, match=f"token_size {layout.token_size + 1}.*token_size {layout.token_size}"):
        embed_zoo(wrong, split, layout)
    short = _tiny_sane(token_size=layout.token_size, window_size=4, halo_size=1, max_tokens=layout.num_tokens - 1)
    with pytest.raises(ValueError, match=r"max_positions\[0\]"):
        embed_zoo(short, split, layout)
    with pytest.raises(ValueError, match="`pooling` must be among"):
        embed_zoo(model, split, layout, pooling="max")


def test_bf16_embeddings_probe_as_well_as_float32(tiny_zoo):
    """A ridge probe of bf16 embeddings fits within 0.01 R² of one of float32 embeddings. Scored on the 15 train
    checkpoints at one fixed alpha: the 3 val and 6 test ones of this zoo make R² swing by more than bf16 rounding."""
    from sane_hf.probing.probe import fit_ridge

    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    split = tiny_zoo.splits["train"]
    scores, features = {}, {}
    for precision in ("fp32", "bf16"):
        out = embed_zoo(model, split, layout, precision=precision, pooling="stats", properties=["test_acc"])
        assert out["embeddings"].dtype == out["features"]["stats"].dtype == torch.float32
        features[precision] = out["features"]["stats"]
        fit = fit_ridge(
            {"train": features[precision]}, {"train": out["targets"]["test_acc"]}, alphas=[0.1], standardize=True
        )
        scores[precision] = fit["scores"]["train"]
    assert not torch.equal(features["bf16"], features["fp32"])  # bf16 was used: the rounding shows
    assert scores["fp32"] > 0.5  # the probe has something to lose
    assert abs(scores["bf16"] - scores["fp32"]) <= 0.01, scores


def test_embed_zoo_across_two_cpu_processes_matches_one(tiny_zoo, tmp_path):
    """Two CPU processes (torchrun): each rank embeds half the rows, every rank gets all of them, in row order."""
    import subprocess
    import sys

    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    model.save_pretrained(tmp_path / "sane")
    split = tiny_zoo.splits["train"]
    expected = embed_zoo(model, split, layout, batch_size=2, pooling=["mean", "stats"], properties=["epoch"])
    script = Path(__file__).with_name("_embed_across_processes.py")
    # torchrun, as the DDP test of pretraining; Accelerate's PartialState joins its process group (gloo on CPU).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    command += [str(tiny_zoo.root), str(tmp_path / "sane"), str(tmp_path / "out")]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out_{rank}.pt", weights_only=True)
        assert got["num_processes"] == 2
        assert got["rows"].tolist() == list(range(split.num_rows))
        assert got["epoch"].tolist() == expected["targets"]["epoch"].tolist()
        assert torch.equal(got["embeddings"], expected["embeddings"])  # whole batches per process: bit-identical
        assert torch.equal(got["stats"], expected["features"]["stats"])


def test_embed_zoo_permutation_average(tiny_zoo):
    from sane_hf.data.zoo_permutations import build_permuter

    layout = tiny_zoo.layout
    model = _tiny_sane(token_size=layout.token_size, max_tokens=layout.num_tokens)
    split = tiny_zoo.splits["validation"]
    permuter = build_permuter(tiny_zoo)

    def run(num_permutations):
        generator = torch.Generator().manual_seed(3)
        return embed_zoo(
            model,
            split,
            layout,
            pooling=["mean", "layers"],
            permuter=permuter,
            num_permutations=num_permutations,
            generator=generator,
        )

    averaged = run(4)
    assert averaged["embeddings"].shape == (split.num_rows, 4)
    assert averaged["features"]["layers"].shape == (split.num_rows, layout.num_layers * 4)
    torch.testing.assert_close(run(4)["embeddings"], averaged["embeddings"])  # reproducible
    # One draw is the embedding of the permuted checkpoints.
    tokens = torch.stack([split[i]["tokens"] for i in range(split.num_rows)])
    generator = torch.Generator().manual_seed(3)
    permutations = permuter.sample_permutations(generator, batch_size=len(tokens))
    permuted = permuter.apply(
        tokens, permutations, start=torch.zeros(len(tokens), dtype=torch.long), window_size=layout.num_tokens
    )
    torch.testing.assert_close(run(1)["embeddings"], model.embed(permuted, layout.positions))
    assert not torch.allclose(permuted, tokens)
    with pytest.raises(ValueError, match="`num_permutations` must be a positive int"):
        run(0)
