"""SANE losses (docs/method.md#objective): masked reconstruction, NT-Xent against a slow reference, gamma edge cases."""

import math

import pytest
import torch

from sane_hf import SaneConfig, SaneModel, SaneModelOutput
from sane_hf.training import masked_reconstruction_loss, nt_xent_loss, reconstruction_r2, sane_loss


def _views(batch_size=3, window=5, token_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch_size, window, token_size, generator=generator) > 0.3
    views = []
    for _ in range(2):
        clean = torch.randn(batch_size, window, token_size, generator=generator).masked_fill(~mask, 0)
        noisy = (clean * 1.1).masked_fill(~mask, 0)
        views.append({"tokens": noisy, "clean_tokens": clean, "mask": mask})
    return views


def _outputs(views, projection_dim=6, seed=1, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for view in views:
        reconstructions = torch.randn(view["tokens"].shape, generator=generator).requires_grad_(requires_grad)
        projections = torch.randn(view["tokens"].shape[0], projection_dim, generator=generator)
        outputs.append(
            SaneModelOutput(reconstructions=reconstructions, projections=projections.requires_grad_(requires_grad))
        )
    return outputs


def test_masked_mse_counts_real_entries_only():
    (view, _), (out, _) = _views(), _outputs(_views())
    pred, target, mask = out.reconstructions, view["tokens"], view["mask"]
    loss = masked_reconstruction_loss(pred, target, mask)
    expected = ((pred - target)[mask] ** 2).mean()
    torch.testing.assert_close(loss, expected)
    # whatever the model predicts at padding does not matter, not even inf
    garbage = pred.masked_fill(~mask, float("inf"))
    assert torch.equal(masked_reconstruction_loss(garbage, target, mask), loss)
    # upstream's reduction: padding in the denominator, masked prediction
    original = masked_reconstruction_loss(pred, target, mask, reduction="original")
    torch.testing.assert_close(original, ((pred * mask - target) ** 2).mean())
    torch.testing.assert_close(original, expected * mask.float().mean())
    assert masked_reconstruction_loss(pred, target, torch.zeros_like(mask)) == 0
    with pytest.raises(ValueError, match="reduction"):
        masked_reconstruction_loss(pred, target, mask, reduction="sum")


def _slow_nt_xent(z_i, z_j, temperature):
    """SimCLR spelled out: for every row, -log(exp(s_pos) / sum over the 2B - 1 other rows of exp(s))."""
    u = torch.cat([z_i, z_j]).double()
    n = u.shape[0]
    batch_size = n // 2
    total = 0.0
    for a in range(n):
        positive = (a + batch_size) % n
        similarities = {
            b: (u[a] @ u[b] / (u[a].norm() * u[b].norm())).item() / temperature for b in range(n) if b != a
        }
        denominator = sum(math.exp(s) for s in similarities.values())
        total += -math.log(math.exp(similarities[positive]) / denominator)
    return total / n


@pytest.mark.parametrize(("batch_size", "temperature"), [(1, 0.1), (2, 0.5), (5, 0.1), (8, 1.0)])
def test_nt_xent_matches_a_slow_reference(batch_size, temperature):
    generator = torch.Generator().manual_seed(batch_size)
    z_i = torch.randn(batch_size, 7, generator=generator)
    z_j = z_i + 0.5 * torch.randn(batch_size, 7, generator=generator)
    loss = nt_xent_loss(z_i, z_j, temperature)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_slow_nt_xent(z_i, z_j, temperature), rel=1e-5, abs=1e-6)
    if batch_size == 1:
        assert loss.item() == 0  # no negatives
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z_i, z_j, 0.0)
    with pytest.raises(ValueError, match="shape"):
        nt_xent_loss(z_i, z_j[:, :3])


def test_sane_loss_combines_the_terms():
    views = _views()
    outputs = _outputs(views, requires_grad=True)
    result = sane_loss(*outputs, *views, gamma=0.05, temperature=0.1)
    assert set(result) == {"loss", "loss_recon", "loss_contrast", "r2"}
    pred = torch.cat([o.reconstructions for o in outputs])
    recon = masked_reconstruction_loss(
        pred, torch.cat([v["tokens"] for v in views]), torch.cat([v["mask"] for v in views])
    )
    contrast = nt_xent_loss(outputs[0].projections, outputs[1].projections, 0.1)
    torch.testing.assert_close(result["loss_recon"], recon)
    torch.testing.assert_close(result["loss_contrast"], contrast)
    torch.testing.assert_close(result["loss"], 0.05 * contrast + 0.95 * recon)
    assert not result["r2"].requires_grad
    # R² over the real entries, computed independently (float64 numpy), for both reductions of the loss
    target = torch.cat([v["tokens"] for v in views])
    real = torch.cat([v["mask"] for v in views]).numpy()
    p64, t64 = pred.detach().double().numpy()[real], target.double().numpy()[real]
    expected_r2 = 1 - ((p64 - t64) ** 2).sum() / ((t64 - t64.mean()) ** 2).sum()
    for reduction in ("mean", "original"):
        r2 = sane_loss(*outputs, *views, gamma=0.05, reduction=reduction)["r2"].item()
        assert r2 == pytest.approx(expected_r2, rel=1e-5), reduction
    result["loss"].backward()
    assert all(o.reconstructions.grad is not None and o.projections.grad is not None for o in outputs)
    # tuples (latents, reconstructions, projections) work too
    as_tuples = [(None, o.reconstructions, o.projections) for o in outputs]
    torch.testing.assert_close(sane_loss(*as_tuples, *views)["loss"], result["loss"])
    # clean targets
    clean = sane_loss(*outputs, *views, clean_targets=True)
    clean_target = torch.cat([v["clean_tokens"] for v in views])
    mask = torch.cat([v["mask"] for v in views])
    torch.testing.assert_close(clean["loss_recon"], masked_reconstruction_loss(pred, clean_target, mask))


@pytest.mark.parametrize("gamma", [0.0, 1e-12, 1.0])
def test_gamma_edge_cases_skip_the_unused_term(gamma):
    views = _views()
    outputs = _outputs(views, requires_grad=True)
    result = sane_loss(*outputs, *views, gamma=gamma)
    result["loss"].backward()
    if gamma < 0.5:  # reconstruction only: the projections get no gradient
        assert torch.equal(result["loss"], result["loss_recon"]) and result["loss_contrast"] == 0
        assert all(o.projections.grad is None for o in outputs)
        assert all(o.reconstructions.grad is not None for o in outputs)
    else:  # contrast only
        assert torch.equal(result["loss"], result["loss_contrast"]) and result["loss_recon"] == 0
        assert all(o.reconstructions.grad is None for o in outputs)
    with pytest.raises(ValueError, match="gamma"):
        sane_loss(*outputs, *views, gamma=1.5)


def test_r2_monitor():
    view, _ = _views()
    target, mask = view["tokens"], view["mask"]
    assert reconstruction_r2(target, target, mask).item() == pytest.approx(1.0)
    mean = target[mask].mean()
    assert reconstruction_r2(torch.full_like(target, mean.item()), target, mask).item() == pytest.approx(0.0, abs=1e-6)
    # padding predictions do not enter
    assert reconstruction_r2(target.masked_fill(~mask, 1e6), target, mask).item() == pytest.approx(1.0)


def test_end_to_end_with_a_tiny_sane_model():
    config = SaneConfig(
        token_size=4, d_model=16, n_heads=2, n_layers=1, latent_dim=8, max_positions=[64, 8, 16], window_size=5
    )
    model = SaneModel(config)
    views = _views()
    positions = torch.stack([torch.arange(5), torch.zeros(5, dtype=torch.long), torch.arange(5)], dim=1).expand(
        3, -1, -1
    )
    outputs = [model(view["tokens"], positions) for view in views]
    result = sane_loss(*outputs, *views)
    assert torch.isfinite(result["loss"])
    result["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
