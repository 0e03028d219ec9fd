"""Samplers in latent space (docs/method.md#samplers): seeded, vectorized, and the original's quirks fixed."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KernelDensity

from sane_hf.generation import (
    KDE_MODES,
    SAMPLERS,
    GenerateConfig,
    LatentSamples,
    bootstrap,
    load_anchors,
    sample_diagonal_gaussian,
    sample_gaussian,
    sample_kde,
    select_anchor_rows,
    subsample,
    top_k,
)


def _anchors(num_anchors: int = 4, seq_len: int = 7, latent_dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_anchors, seq_len, latent_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", KDE_MODES)
def test_kde_is_reproducible_with_a_seeded_generator_and_seeds_differ(mode):
    anchors = _anchors()
    a = sample_kde(anchors, 5, 0.1, mode=mode, generator=torch.Generator().manual_seed(1))
    b = sample_kde(anchors, 5, 0.1, mode=mode, generator=torch.Generator().manual_seed(1))
    c = sample_kde(anchors, 5, 0.1, mode=mode, generator=torch.Generator().manual_seed(2))
    assert a.latents.shape == (5, 7, 3) and a.anchor_index.shape == (5,)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.anchor_index, b.anchor_index)
    assert not torch.equal(a.latents, c.latents)


def test_kde_token_mode_draws_independent_noise_per_sample_and_token():
    anchors = torch.zeros(1, 6, 4)  # one anchor at 0: the samples are the noise itself
    noise = sample_kde(anchors, 4000, 1.0, mode="token", generator=torch.Generator().manual_seed(0)).latents
    # Tokens of one sample are not copies of each other (the original's fixed seed made them identical, §6.5) ...
    assert not torch.equal(noise[:, 0], noise[:, 1])
    # ... and the noise is uncorrelated across tokens and samples, with the bandwidth as its std.
    flat = noise.reshape(4000, -1)
    correlation = torch.corrcoef(flat.T)
    off_diagonal = correlation[~torch.eye(correlation.shape[0], dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.08
    assert abs(float(flat.std()) - 1.0) < 0.03
    assert not torch.equal(noise[0], noise[1])


def test_kde_original_modes_share_noise_like_the_original():
    anchors = _anchors()
    token = sample_kde(anchors, 8, 0.2, mode="original_token", generator=torch.Generator().manual_seed(0))
    eps = token.latents - anchors[token.anchor_index]
    assert torch.allclose(eps, eps[:, :1].expand_as(eps))  # one eps_r in R^L for every token of sample r
    individual = sample_kde(anchors, 8, 0.2, mode="original_individual", generator=torch.Generator().manual_seed(0))
    eps = individual.latents - anchors[individual.anchor_index]
    assert torch.allclose(eps, eps[:, :1, :1].expand_as(eps), atol=1e-6)  # one scalar per sample


@pytest.mark.parametrize("mode", ["original_token", "original_individual"])
def test_kde_original_modes_reproduce_scikit_learn_with_random_state(mode):
    """docs/method.md#samplers: one KernelDensity per token (or per scalar), each sampled with random_state=42."""
    anchors = _anchors(num_anchors=5, seq_len=4, latent_dim=3)
    ours = sample_kde(anchors, 6, 0.2, mode=mode, random_state=42).latents
    data = anchors.double().numpy()
    for s in range(anchors.shape[1]):
        if mode == "original_token":
            kde = KernelDensity(kernel="gaussian", bandwidth=0.2).fit(data[:, s, :])
            expected = kde.sample(6, random_state=42)
            assert torch.equal(ours[:, s, :], torch.from_numpy(expected).float())
        else:
            for d in range(anchors.shape[2]):
                kde = KernelDensity(kernel="gaussian", bandwidth=0.2).fit(data[:, s, d : d + 1])
                expected = kde.sample(6, random_state=42)[:, 0]
                assert torch.equal(ours[:, s, d], torch.from_numpy(expected).float())


def test_kde_mixed_mode_takes_tokens_from_different_anchors():
    anchors = torch.arange(3, dtype=torch.float32)[:, None, None].expand(3, 50, 2) * 100
    samples = sample_kde(anchors, 4, 0.01, mode="mixed", generator=torch.Generator().manual_seed(0))
    token_anchor = (samples.latents[..., 0] / 100).round().long()  # [4, 50]
    assert all(len(set(row.tolist())) > 1 for row in token_anchor)
    assert torch.equal(samples.anchor_index, torch.mode(token_anchor, dim=1).values)


def test_kde_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        sample_kde(_anchors(), 2, 0.1, mode="joint")
    with pytest.raises(ValueError, match="`bandwidth`"):
        sample_kde(_anchors(), 2, -1.0)
    with pytest.raises(ValueError, match="random_state"):
        sample_kde(_anchors(), 2, 0.1, mode="token", random_state=42)


def test_diagonal_gaussian_sampler_fits_per_token_statistics():
    anchors = _anchors(num_anchors=6)
    a = sample_diagonal_gaussian(anchors, 3000, generator=torch.Generator().manual_seed(0))
    b = sample_diagonal_gaussian(anchors, 3000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.latents, b.latents)
    assert torch.allclose(a.latents.mean(0), anchors.mean(0), atol=0.12)
    assert torch.allclose(a.latents.std(0), anchors.std(0), rtol=0.1, atol=0.02)
    # Each sample is assigned its nearest anchor.
    distances = torch.cdist(a.latents[:5].flatten(1), anchors.flatten(1))
    assert torch.equal(a.anchor_index[:5], distances.argmin(1))


def test_the_gaussian_name_is_a_deprecated_alias_of_the_diagonal_gaussian():
    """`gaussian` was named after the paper's SANE_GAUSS (bootstrapping from a Gaussian prior), which it is not: the
    old name still works, warns, and means the diagonal Gaussian."""
    anchors = _anchors(num_anchors=6)
    with pytest.warns(FutureWarning, match="diagonal_gaussian"):
        old = sample_gaussian(anchors, 5, generator=torch.Generator().manual_seed(0))
    new = sample_diagonal_gaussian(anchors, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old.latents, new.latents)
    with pytest.warns(FutureWarning, match="not the paper's SANE_GAUSS"):
        config = GenerateConfig(model="sane", dataset="zoo", sampler="gaussian")
    assert config.sampler == "diagonal_gaussian"
    assert "gaussian" not in SAMPLERS


def _score_by_first_entry(samples: LatentSamples) -> torch.Tensor:
    return samples.latents[:, 0, 0].double()


def test_subsampling_keeps_the_top_m_by_score():
    candidates = sample_kde(_anchors(), 40, 0.5, generator=torch.Generator().manual_seed(3))
    kept = subsample(candidates, _score_by_first_entry, keep=7)
    scores = _score_by_first_entry(candidates)
    expected = torch.sort(scores, descending=True).indices[:7]
    assert len(kept) == 7
    assert torch.equal(kept.latents, candidates.latents[expected])
    assert torch.equal(kept.anchor_index, candidates.anchor_index[expected])
    assert torch.equal(kept.scores, scores[expected])
    assert torch.all(kept.scores[:-1] >= kept.scores[1:])
    with pytest.raises(ValueError, match="top 41"):
        subsample(candidates, _score_by_first_entry, keep=41)


@pytest.mark.parametrize("pool", ["last", "all"])
def test_bootstrapping_returns_the_true_top_m(pool):
    anchors = _anchors(num_anchors=5)
    seen = []

    def score(samples: LatentSamples) -> torch.Tensor:
        seen.append(samples)
        return _score_by_first_entry(samples)

    result = bootstrap(
        anchors,
        score,
        num_models=4,
        iterations=3,
        samples_per_iteration=12,
        keep_top=3,
        bandwidth=0.3,
        generator=torch.Generator().manual_seed(0),
        pool=pool,
    )
    assert len(seen) == 3 and len(result.history) == 3
    pool_samples = seen[-1] if pool == "last" else LatentSamples.cat(seen)
    pool_scores = _score_by_first_entry(pool_samples)
    expected = torch.sort(pool_scores, descending=True).indices[:4]
    assert torch.equal(result.samples.latents, pool_samples.latents[expected])
    assert torch.equal(result.samples.scores, pool_scores[expected])
    # The refit moves the population towards higher scores, and anchor indices refer to the initial anchors.
    assert result.history[-1]["best_mean"] >= result.history[0]["best_mean"]
    assert int(result.samples.anchor_index.max()) < anchors.shape[0]
    # Reproducible with the same seed.
    again = bootstrap(
        anchors,
        _score_by_first_entry,
        num_models=4,
        iterations=3,
        samples_per_iteration=12,
        keep_top=3,
        bandwidth=0.3,
        generator=torch.Generator().manual_seed(0),
        pool=pool,
    )
    assert torch.equal(again.samples.latents, result.samples.latents)


def test_top_k_needs_scores():
    with pytest.raises(ValueError, match="scored"):
        top_k(LatentSamples(latents=_anchors(), anchor_index=torch.arange(4)), 2)


def test_anchor_selection_ranks_models_at_one_epoch(cnn_setup):
    zoo = cnn_setup["zoo"]
    train = zoo.splits["train"]
    rows = select_anchor_rows(train, 3, "test_acc")
    meta = train.select_columns(["model_id", "epoch", "test_acc"]).with_format(None)[:]
    last = max(meta["epoch"])
    at_last = sorted(
        (acc, model_id)
        for model_id, epoch, acc in zip(meta["model_id"], meta["epoch"], meta["test_acc"])
        if epoch == last
    )[::-1]
    assert [meta["model_id"][r] for r in rows] == [model_id for _, model_id in at_last[:3]]
    assert all(meta["epoch"][r] == last for r in rows)
    assert [meta["epoch"][r] for r in select_anchor_rows(train, 2, "test_acc", epoch=1)] == [1, 1]
    with pytest.raises(ValueError, match="no column"):
        select_anchor_rows(train, 2, "no_such_property")
    with pytest.raises(ValueError, match="No checkpoint"):
        select_anchor_rows(train, 2, "test_acc", epoch=99)


def test_anchors_carry_their_own_architecture_arguments(cnn_setup):
    zoo = cnn_setup["zoo"]
    anchors = load_anchors(zoo, num_anchors=4, filters={"activation": "tanh"})
    assert len(anchors) == 4 and anchors.tokens.shape == (4, zoo.layout.num_tokens, zoo.layout.token_size)
    assert all(kwargs["activation"] == "tanh" for kwargs in anchors.model_kwargs)
    assert all(kwargs["input_size"] == 8 and kwargs["padding"] == "auto" for kwargs in anchors.model_kwargs)
    assert {kwargs["dropout"] for kwargs in load_anchors(zoo, num_anchors=8).model_kwargs} == {0.0, 0.1}
    # Tokens are the stored (normalized) rows of those checkpoints.
    row = select_anchor_rows(zoo.splits["train"], 1, "test_acc", filters={"activation": "tanh"})[0]
    assert torch.equal(anchors.tokens[0], zoo.splits["train"][row]["tokens"])
    assert np.isclose(anchors.values[0], float(zoo.splits["train"][row]["test_acc"]))


def test_anchor_covariance_kde_moves_along_the_anchors_differences():
    """Samples of the covariance-shaped kernel are anchors plus a combination of the anchors' deviations from their
    mean: the residual outside that span is zero, and bandwidth 0 returns the anchors themselves."""
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(4, 6, 5, generator=generator)
    samples = sample_kde(anchors, 32, 0.7, mode="anchor_covariance", generator=generator)
    moves = (samples.latents - anchors[samples.anchor_index]).reshape(32, -1)
    deviations = (anchors - anchors.mean(dim=0)).reshape(4, -1)
    coefficients = torch.linalg.lstsq(deviations.T, moves.T).solution
    torch.testing.assert_close(deviations.T @ coefficients, moves.T, rtol=0, atol=1e-5)
    assert moves.norm(dim=1).min() > 0
    still = sample_kde(anchors, 8, 0.0, mode="anchor_covariance", generator=generator)
    torch.testing.assert_close(still.latents, anchors[still.anchor_index])
    with pytest.raises(ValueError, match="at least two anchors"):
        sample_kde(anchors[:1], 2, 0.1, mode="anchor_covariance")
