"""Permutation specs, state_dict and token-window permutations, and weight matching (docs/method.md#canonicalization)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sane_hf import TokenLayout
from sane_hf.tokenization.permutations import (
    AxisPermutation,
    PermutationSpec,
    TokenPermuter,
    canonicalize,
    permutation_spec_from_module,
    permute_state_dict,
    weight_matching,
)
from sane_hf.zoo_models import build_zoo_model


def _with_batchnorm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Default init plus non-trivial BatchNorm affine parameters and running statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.weight.copy_(1 + 0.2 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model.eval()


class _Traced(nn.Module):
    """No `module_list` and not an nn.Sequential: the spec comes from torch.fx."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.fc1 = nn.Linear(5 * 4 * 4, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc2(torch.tanh(self.fc1(torch.flatten(x, 1))))


def _sequential() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 6, 3),
        nn.BatchNorm1d(6),
        nn.GELU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(6 * 3, 9),
        nn.LayerNorm(9),
        nn.SiLU(),
        nn.Linear(9, 4),
    )


# name -> (factory, input shape, token size). Token sizes are small on purpose: rows span several tokens, so input
# blocks straddle token boundaries.
MODELS = {
    "cnn_s": (lambda: build_zoo_model("cnn_s", input_size=8, padding="auto"), (4, 1, 8, 8), 7),
    "cnn3": (lambda: build_zoo_model("cnn3", in_channels=1, input_size=8, padding="auto"), (4, 1, 8, 8), 11),
    "mlp": (lambda: build_zoo_model("mlp", in_features=64, hidden_sizes=[16, 12]), (4, 64), 5),
    "resnet18": (lambda: build_zoo_model("resnet18", width=8), (2, 3, 16, 16), 16),
    "sequential": (_sequential, (4, 2, 8), 6),
    "traced": (_Traced, (4, 2, 6, 6), 8),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    factory, input_shape, token_size = MODELS[request.param]
    torch.manual_seed(0)
    model = _with_batchnorm_stats(factory())
    spec = permutation_spec_from_module(model)
    layout = TokenLayout.from_module(model, token_size=token_size)
    inputs = torch.randn(input_shape, generator=torch.Generator().manual_seed(1))
    return factory, model, spec, layout, inputs


def _load(factory, state_dict) -> nn.Module:
    torch.manual_seed(123)
    model = factory().eval()
    model.load_state_dict(state_dict)
    return model


def _unbatched(perms, index=0):
    return {name: perm[index] for name, perm in perms.items()}


def test_permuted_state_dict_computes_the_same_function(case):
    factory, model, spec, _, inputs = case
    perms = spec.random_permutations(torch.Generator().manual_seed(2))
    permuted = permute_state_dict(model.state_dict(), spec, perms)
    assert list(permuted) == list(model.state_dict())
    # the permutation is not trivial
    assert any(not torch.equal(permuted[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(_load(factory, permuted)(inputs), model(inputs), atol=1e-5, rtol=0)


def test_token_path_computes_the_same_function_and_matches_the_reference_exactly(case):
    factory, model, spec, layout, inputs = case
    permuter = TokenPermuter(layout, spec)
    perms = permuter.sample_permutations(torch.Generator().manual_seed(3), batch_size=1)
    tokens = layout.tokenize(model.state_dict())[0]
    window = permuter.apply(tokens[None], perms, torch.tensor([0]), layout.num_tokens)[0]
    reference = layout.tokenize(permute_state_dict(model.state_dict(), spec, _unbatched(perms)))[0]
    assert torch.equal(window, reference)
    with torch.no_grad():
        torch.testing.assert_close(_load(factory, layout.detokenize(window))(inputs), model(inputs), atol=1e-5, rtol=0)


def test_permuted_whole_models_compute_the_same_functions(case):
    factory, model, spec, layout, inputs = case
    permuter = TokenPermuter(layout, spec)
    torch.manual_seed(7)
    other = _with_batchnorm_stats(factory(), seed=1)
    tokens = torch.stack([layout.tokenize(m.state_dict())[0] for m in (model, other)])
    permuted = permuter.permute_models(tokens, torch.Generator().manual_seed(4))
    assert permuted.shape == tokens.shape
    for original, row in zip((model, other), permuted):
        assert not torch.equal(layout.detokenize(row)[layout.keys[0]], original.state_dict()[layout.keys[0]])
        with torch.no_grad():
            torch.testing.assert_close(
                _load(factory, layout.detokenize(row))(inputs), original(inputs), atol=1e-5, rtol=0
            )
    again = permuter.permute_models(tokens, torch.Generator().manual_seed(4))
    assert torch.equal(permuted, again)
    # One permutation per model: two copies of one model come out permuted differently.
    twice = permuter.permute_models(tokens[:1].expand(2, -1, -1), torch.Generator().manual_seed(5))
    assert not torch.equal(twice[0], twice[1])


def test_random_windows_equal_slices_of_the_permuted_tokens(case):
    _, model, spec, layout, _ = case
    permuter = TokenPermuter(layout, spec)
    S, T = layout.num_tokens, layout.token_size
    generator = torch.Generator().manual_seed(4)
    batch_size = 5
    full = torch.stack([layout.tokenize(model.state_dict())[0] * (b + 1) for b in range(batch_size)])
    perms = permuter.sample_permutations(generator, batch_size)
    references = (
        torch.stack(
            [
                layout.tokenize(permute_state_dict({**model.state_dict()}, spec, _unbatched(perms, b)))[0]
                for b in range(5)
            ]
        )
        * torch.arange(1, batch_size + 1)[:, None, None]
    )
    with_sentinel = torch.cat([full.reshape(batch_size, -1), torch.zeros(batch_size, 1)], dim=1)
    for window_size in sorted({1, 2, S // 3 + 1, S - 1, S} - {0}):
        start = torch.randint(0, S - window_size + 1, (batch_size,), generator=generator)
        expected = torch.stack([references[b, s : s + window_size] for b, s in enumerate(start.tolist())])
        assert torch.equal(permuter.apply(full, perms, start, window_size), expected)
        index = permuter.permuted_token_index(perms, start, window_size)
        assert index.shape == (batch_size, window_size, T) and index.dtype == torch.long
        gathered = with_sentinel.gather(1, index.view(batch_size, -1)).view_as(expected)
        assert torch.equal(gathered, expected)
        # padding slots always point at the sentinel, real slots never do
        mask = layout.mask[start[:, None] + torch.arange(window_size)]
        assert torch.all(index[~mask] == S * T) and torch.all(index[mask] < S * T)


def test_padding_stays_zero_and_identity_gives_the_plain_window(case):
    _, model, spec, layout, _ = case
    permuter = TokenPermuter(layout, spec)
    tokens = layout.tokenize(model.state_dict())[0]
    dirty = tokens.clone()
    dirty[~layout.mask] = float("nan")  # whatever sits in the source padding must not leak
    S = layout.num_tokens
    start = torch.tensor([0, S // 2])
    perms = permuter.sample_permutations(torch.Generator().manual_seed(5), batch_size=2)
    windows = permuter.apply(torch.stack([dirty, dirty]), perms, start, S - S // 2)
    masks = torch.stack([layout.mask[s : s + S - S // 2] for s in start.tolist()])
    assert torch.all(windows[~masks] == 0) and not windows.isnan().any()
    identity = permuter.apply(tokens.expand(2, -1, -1), permuter.identity_permutations(2), start, S - S // 2)
    assert torch.equal(identity, torch.stack([tokens[s : s + S - S // 2] for s in start.tolist()]))


def test_a_slice_of_the_sequence_is_enough():
    model = _with_batchnorm_stats(build_zoo_model("resnet18", width=8))
    layout = TokenLayout.from_module(model, token_size=16)
    permuter = TokenPermuter(layout, permutation_spec_from_module(model))
    tokens = layout.tokenize(model.state_dict())[0].expand(3, -1, -1)
    start, window_size = torch.tensor([0, 700, layout.num_tokens - 50]), 50
    perms = permuter.sample_permutations(torch.Generator().manual_seed(6), 3)
    expected = permuter.apply(tokens, perms, start, window_size)
    ranges = permuter.required_token_range(start, window_size)
    length = int((ranges[:, 1] - ranges[:, 0]).max())
    lo = torch.minimum(ranges[:, 0], torch.tensor(layout.num_tokens - length))
    sliced = torch.stack([tokens[b, s : s + length] for b, s in enumerate(lo.tolist())])
    assert torch.equal(permuter.apply(sliced, perms, start, window_size, source_start=lo), expected)
    with pytest.raises(ValueError, match="does not cover"):
        permuter.apply(sliced[:, :1], perms, start, window_size, source_start=lo)


def test_sample_permutations_are_seeded_and_per_sample():
    model = build_zoo_model("resnet18", width=8)
    layout = TokenLayout.from_module(model, token_size=16)
    permuter = TokenPermuter(layout, permutation_spec_from_module(model))
    first = permuter.sample_permutations(torch.Generator().manual_seed(7), 4)
    again = permuter.sample_permutations(torch.Generator().manual_seed(7), 4)
    other = permuter.sample_permutations(torch.Generator().manual_seed(8), 4)
    assert list(first) == list(permuter.spec.groups)
    for name, size in permuter.spec.groups.items():
        assert first[name].shape == (4, size)
        assert torch.equal(first[name].sort(dim=1).values, torch.arange(size).expand(4, -1))
        assert torch.equal(first[name], again[name])
    assert any(not torch.equal(first[n], other[n]) for n in first)
    assert not torch.equal(first["P_res3"][0], first["P_res3"][1])  # independent per sample


def test_bad_window_arguments_raise():
    model = build_zoo_model("mlp")
    layout = TokenLayout.from_module(model, token_size=8)
    permuter = TokenPermuter(layout, permutation_spec_from_module(model))
    full = layout.tokenize(model.state_dict())[0][None]
    perms = permuter.identity_permutations(1)
    with pytest.raises(ValueError, match="Window starts"):
        permuter.apply(full, perms, torch.tensor([layout.num_tokens - 1]), 2)
    with pytest.raises(ValueError, match="window_size"):
        permuter.apply(full, perms, torch.tensor([0]), layout.num_tokens + 1)
    with pytest.raises(ValueError, match="Missing permutations"):
        permuter.apply(full, {}, torch.tensor([0]), 2)
    with pytest.raises(ValueError, match=r"must have shape \[1, 32\]"):
        permuter.apply(full, {**perms, "P_module_list.0": torch.arange(32)}, torch.tensor([0]), 2)


def test_zoo_specs_have_the_original_groups():
    cnn3 = permutation_spec_from_module(build_zoo_model("cnn3"))
    # CNN3: groups on module_list 0/4/8/13 (SANE §2.5), the flatten block 60 = 15 x 4
    assert cnn3.groups == {"P_module_list.0": 16, "P_module_list.4": 32, "P_module_list.8": 15, "P_module_list.13": 20}
    assert cnn3.axes["module_list.13.weight"] == AxisPermutation("P_module_list.13", "P_module_list.8", 4)
    assert cnn3.axes["module_list.16.weight"] == AxisPermutation(None, "P_module_list.13", 1)
    assert cnn3.axes["module_list.16.bias"] == AxisPermutation(None)

    resnet = permutation_spec_from_module(build_zoo_model("resnet18"))
    residual = {name: size for name, size in resnet.groups.items() if name.startswith("P_res")}
    assert residual == {"P_res0": 64, "P_res1": 128, "P_res2": 256, "P_res3": 512}
    assert len(resnet.groups) == 4 + 8  # plus one inner group per block
    axes = resnet.axes
    assert axes["conv1.weight"] == AxisPermutation("P_res0", None)
    assert axes["layer1.1.conv2.weight"] == AxisPermutation("P_res0", "P_layer1.1.inner")
    assert axes["layer2.0.conv1.weight"] == AxisPermutation("P_layer2.0.inner", "P_res0")
    assert axes["layer2.0.downsample.0.weight"] == AxisPermutation("P_res1", "P_res0")
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        assert axes[f"layer2.0.downsample.1.{leaf}"] == AxisPermutation("P_res1")
        assert axes[f"layer3.1.bn1.{leaf}"] == AxisPermutation("P_layer3.1.inner")
    assert axes["fc.weight"] == AxisPermutation(None, "P_res3") and axes["fc.bias"] == AxisPermutation(None)
    assert "bn1.num_batches_tracked" not in axes


def test_spec_round_trips_through_a_dict_and_validates():
    model = build_zoo_model("cnn_s")
    spec = permutation_spec_from_module(model)
    assert PermutationSpec.from_dict(spec.to_dict()) == spec
    spec.validate(model.state_dict())
    with pytest.raises(ValueError, match="axis 1 should have 36 entries"):
        spec.validate({**model.state_dict(), "module_list.9.weight": torch.zeros(20, 35)})
    with pytest.raises(ValueError, match="does not cover"):
        spec.validate({**model.state_dict(), "extra": torch.zeros(3)})
    with pytest.raises(ValueError, match="unknown permutation group"):
        PermutationSpec(groups={}, axes={"w": AxisPermutation("P_x")})
    with pytest.raises(ValueError, match="lacks the tokenized keys"):
        TokenPermuter(TokenLayout.from_module(build_zoo_model("mlp"), token_size=8), spec)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(x + self.fc1(x))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: nn.Sequential(nn.Linear(4, 8), nn.TransformerEncoderLayer(8, 2), nn.Linear(8, 2)), r"module `1`"),
        (lambda: nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 2)), r"module `0` \(Embedding\)"),
        (lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1)), "grouped"),
        (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), "without a Flatten"),
        (lambda: nn.Sequential(nn.Linear(4, 8), nn.Softmax(dim=1), nn.Linear(8, 2)), r"module `1` \(Softmax\)"),
        (_Residual, "does not just consume the previous result"),
        (_Attention, r"module `attn` \(MultiheadAttention\)"),
    ],
)
def test_underivable_architectures_raise_naming_the_module(factory, message):
    with pytest.raises(ValueError, match=message):
        permutation_spec_from_module(factory())


@pytest.mark.parametrize("name", ["cnn3", "resnet18", "mlp"])
def test_weight_matching_recovers_a_random_permutation(name):
    factory, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = _with_batchnorm_stats(factory())
    spec = permutation_spec_from_module(model)
    original = model.state_dict()
    perms = spec.random_permutations(torch.Generator().manual_seed(9))
    permuted = permute_state_dict(original, spec, perms)
    matched = weight_matching(spec, original, permuted, generator=torch.Generator().manual_seed(10))
    restored = permute_state_dict(permuted, spec, matched)
    for key, value in original.items():
        assert torch.equal(restored[key], value), key
    # matching a model to itself gives the identity
    itself = weight_matching(spec, original, original, generator=torch.Generator().manual_seed(11))
    assert all(torch.equal(p, torch.arange(spec.groups[g])) for g, p in itself.items())


def test_canonicalize_maps_permuted_copies_onto_the_reference():
    model = _with_batchnorm_stats(build_zoo_model("cnn_s", input_size=8, padding="auto"))
    spec = permutation_spec_from_module(model)
    reference = model.state_dict()
    copies = [
        permute_state_dict(reference, spec, spec.random_permutations(torch.Generator().manual_seed(seed)))
        for seed in (12, 13)
    ]
    canonical, perms = canonicalize(copies, reference, spec, return_permutations=True)
    assert len(canonical) == len(perms) == 2
    for state_dict in canonical:
        assert all(torch.equal(state_dict[k], v) for k, v in reference.items())
