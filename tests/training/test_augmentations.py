"""Noise, random erasing and the two views (docs/method.md#objective): padding stays zero, seeds reproduce, view 2 permutes."""

import pytest
import torch

from sane_hf import TokenLayout
from sane_hf.tokenization.permutations import TokenPermuter, permutation_spec_from_module, permute_state_dict
from sane_hf.training import (
    ErasingConfig,
    additive_noise,
    make_two_views,
    multiplicative_noise,
    random_erasing,
)
from sane_hf.zoo_models import build_zoo_model


BATCH_SIZE, WINDOW_SIZE = 4, 24


@pytest.fixture(scope="module")
def zoo():
    """Four CNN3s (1x8x8 input) tokenized with T=11, so rows span several tokens and windows have padding."""
    models = []
    for seed in range(BATCH_SIZE):
        torch.manual_seed(seed)
        models.append(build_zoo_model("cnn3", in_channels=1, input_size=8, padding="auto"))
    layout = TokenLayout.from_module(models[0], token_size=11)
    permuter = TokenPermuter(layout, permutation_spec_from_module(models[0]))
    full = layout.tokenize([m.state_dict() for m in models])[0]
    return models, layout, permuter, full


def _batch(zoo, seed=0):
    _, layout, _, full = zoo
    start = torch.randint(
        0, layout.num_tokens - WINDOW_SIZE + 1, (BATCH_SIZE,), generator=torch.Generator().manual_seed(seed)
    )
    tokens = torch.arange(WINDOW_SIZE)[None] + start[:, None]
    return {
        "tokens": torch.stack([full[b, tokens[b]] for b in range(BATCH_SIZE)]),
        "mask": layout.mask[tokens],
        "positions": layout.positions[tokens],
        "start": start,
        "full_tokens": full,
        "properties": torch.randn(BATCH_SIZE, 3),
    }


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def test_noise_keeps_padding_zero_and_changes_real_values(zoo):
    batch = _batch(zoo)
    tokens, mask = batch["tokens"], batch["mask"]
    assert (~mask).any() and torch.all(tokens[~mask] == 0)
    for noise in (multiplicative_noise, additive_noise):
        noisy = noise(tokens, mask, 0.1, _generator(0))
        assert torch.all(noisy[~mask] == 0)
        assert torch.all(noisy[mask] != tokens[mask])
        assert torch.equal(noisy, noise(tokens, mask, 0.1, _generator(0)))
        assert not torch.equal(noisy, noise(tokens, mask, 0.1, _generator(1)))
        assert noise(tokens, mask, 0.0, _generator(0)) is tokens
    # multiplicative: x * (1 + sigma * N); the relative change has std sigma
    relative = multiplicative_noise(tokens, mask, 0.1, _generator(2))[mask] / tokens[mask] - 1
    assert abs(relative.std().item() - 0.1) < 0.01
    # padding stays zero even if the input held garbage there
    dirty = tokens.masked_fill(~mask, 5.0)
    assert torch.all(additive_noise(dirty, mask, 0.1, _generator(0))[~mask] == 0)
    with pytest.raises(ValueError, match="sigma"):
        multiplicative_noise(tokens, mask, -1.0)


def test_random_erasing_erases_one_rectangle_and_keeps_padding_zero(zoo):
    batch = _batch(zoo)
    tokens = batch["tokens"] + 1.0  # no real value is 0, so erased entries are recognizable
    mask = batch["mask"]
    tokens = tokens.masked_fill(~mask, 0)
    erased = random_erasing(tokens, mask, p=1.0, generator=_generator(0))
    assert torch.all(erased[~mask] == 0)
    changed = (erased != tokens) & mask
    assert changed.flatten(1).any(1).all()  # p=1: every sample got a rectangle (one always fits in 24 x 11)
    for b in range(BATCH_SIZE):
        rows, cols = changed[b].nonzero(as_tuple=True)
        # the erased entries lie in one rectangle, and every real entry inside it is erased
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert torch.all(erased[b][box][mask[b][box]] == 0)
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert area <= 0.33 * WINDOW_SIZE * 11 + WINDOW_SIZE + 11  # scale bound, up to rounding
    assert torch.equal(erased, random_erasing(tokens, mask, p=1.0, generator=_generator(0)))
    assert not torch.equal(erased, random_erasing(tokens, mask, p=1.0, generator=_generator(1)))
    assert torch.equal(random_erasing(tokens, mask, p=0.0, generator=_generator(0)), tokens)
    noisy_fill = random_erasing(tokens, mask, p=1.0, value="random", generator=_generator(0))
    assert torch.all(noisy_fill[~mask] == 0) and not torch.equal(noisy_fill, erased)
    with pytest.raises(ValueError, match="scale"):
        ErasingConfig(scale=(0.5, 0.1))


def test_two_views_canonical_and_permuted(zoo):
    models, layout, permuter, full = zoo
    batch = _batch(zoo)
    view_1, view_2 = make_two_views(batch, permuter, noise_multiplicative=0.1, generator=_generator(0))
    # view 1: the canonical window; view 2: a permuted copy of the same models
    assert torch.equal(view_1["clean_tokens"], batch["tokens"]) and "permutations" not in view_1
    spec = permuter.spec
    for b, model in enumerate(models):
        perms = {name: perm[b] for name, perm in view_2["permutations"].items()}
        permuted = layout.tokenize(permute_state_dict(model.state_dict(), spec, perms))[0]
        start = int(batch["start"][b])
        assert torch.equal(view_2["clean_tokens"][b], permuted[start : start + WINDOW_SIZE])
    assert not torch.equal(view_2["clean_tokens"], batch["tokens"])
    for view in (view_1, view_2):
        assert view["mask"] is batch["mask"] and view["positions"] is batch["positions"]
        assert view["start"] is batch["start"] and view["properties"] is batch["properties"]
        assert "full_tokens" not in view
        assert torch.all(view["tokens"][~batch["mask"]] == 0)
        assert not torch.equal(view["tokens"], view["clean_tokens"])  # noised
    # the noise of the two views is independent
    ratio_1 = view_1["tokens"][batch["mask"]] / view_1["clean_tokens"][batch["mask"]]
    ratio_2 = view_2["tokens"][batch["mask"]] / view_2["clean_tokens"][batch["mask"]]
    assert not torch.allclose(ratio_1, ratio_2)


def test_two_views_are_reproducible_and_configurable(zoo):
    _, _, permuter, _ = zoo
    batch = _batch(zoo, seed=1)
    erase = {"p": 1.0}
    first = make_two_views(batch, permuter, noise_additive=0.05, erase=erase, generator=_generator(3))
    again = make_two_views(batch, permuter, noise_additive=0.05, erase=erase, generator=_generator(3))
    other = make_two_views(batch, permuter, noise_additive=0.05, erase=erase, generator=_generator(4))
    for a, b, c in zip(first, again, other):
        assert torch.equal(a["tokens"], b["tokens"]) and not torch.equal(a["tokens"], c["tokens"])
        assert torch.all(a["tokens"][~batch["mask"]] == 0)
    both = make_two_views(batch, permuter, permute_view_1=True, generator=_generator(5))
    assert all("permutations" in view for view in both)
    assert not torch.equal(both[0]["clean_tokens"], both[1]["clean_tokens"])
    # "copy" mode (upstream's permutation_number=0): no permuter, no full tokens needed
    plain = {k: v for k, v in batch.items() if k != "full_tokens"}
    copy_1, copy_2 = make_two_views(plain, permute_view_2=False, noise_multiplicative=0.0)
    assert torch.equal(copy_1["tokens"], batch["tokens"]) and torch.equal(copy_2["tokens"], batch["tokens"])


def test_a_requested_permutation_is_never_silently_skipped(zoo):
    _, _, permuter, _ = zoo
    batch = _batch(zoo)
    with pytest.raises(ValueError, match="permute_view_2=True needs a `permuter`"):
        make_two_views(batch)
    with pytest.raises(ValueError, match="full_tokens"):
        make_two_views({k: v for k, v in batch.items() if k != "full_tokens"}, permuter)
    with pytest.raises(ValueError, match="lacks 'start'"):
        make_two_views({k: v for k, v in batch.items() if k != "start"}, permuter)
