"""Permutation symmetries of transformers models (docs/method.md#transformer-symmetries): whole attention heads,
query/key and value/output dimensions inside a head, feed-forward units, for the BERT, ViT and GPT-2 families."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

from sane_hf import TokenLayout
from sane_hf.tokenization.permutations import (
    AxisPermutation,
    HeadGroup,
    PermutationSpec,
    TokenPermuter,
    canonicalize,
    permutation_spec_from_module,
    permute_state_dict,
    weight_matching,
)


HEADS, HEAD_DIM = 2, 4


def _vit():
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=HEADS * HEAD_DIM,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=12,
        num_labels=10,
    )
    return ViTForImageClassification(config), lambda g: {"pixel_values": torch.randn(3, 1, 8, 8, generator=g)}


def _bert():
    config = BertConfig(
        vocab_size=30,
        hidden_size=HEADS * HEAD_DIM,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=12,
        max_position_embeddings=16,
        num_labels=3,
    )
    return BertForSequenceClassification(config), lambda g: {"input_ids": torch.randint(0, 30, (3, 7), generator=g)}


def _gpt2():
    config = GPT2Config(vocab_size=40, n_positions=12, n_embd=HEADS * HEAD_DIM, n_layer=2, n_head=HEADS)
    config.bos_token_id = config.eos_token_id = 0
    return GPT2LMHeadModel(config), lambda g: {"input_ids": torch.randint(0, 40, (3, 7), generator=g)}


FAMILIES = {"vit": _vit, "bert": _bert, "gpt2": _gpt2}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    model, make_inputs = FAMILIES[request.param]()
    model.eval()
    spec = permutation_spec_from_module(model)
    return {
        "name": request.param,
        "model": model,
        "inputs": make_inputs(torch.Generator().manual_seed(1)),
        "spec": spec,
    }


def _run(model, state_dict, inputs):
    clone = type(model)(model.config).eval()
    clone.load_state_dict(state_dict)  # strict: every key is set
    with torch.no_grad():
        return clone(**inputs).logits


def test_spec_has_heads_and_feed_forward_groups_per_layer(family):
    spec = family["spec"]
    assert len(spec.heads) == 2  # one head group per layer
    for head in spec.heads.values():
        assert head.num_heads == HEADS and [spec.groups[g] for g in head.groups] == [HEADS * HEAD_DIM] * 2
    feed_forward = [g for g in spec.groups if g.endswith(".mlp")]
    assert len(feed_forward) == 2
    if family["name"] == "gpt2":  # c_attn rows are [q | k | v]: one concatenated group per layer
        assert list(spec.concat.values()) == [(h.groups[0], h.groups[0], h.groups[1]) for h in spec.heads.values()]
        assert spec.axes["lm_head.weight"].out_group is None  # the tied head is part of the unpermuted stream


def test_random_permutations_move_whole_heads(family):
    spec = family["spec"]
    perms = spec.random_permutations(torch.Generator().manual_seed(3), batch_size=16)
    for head in spec.heads.values():
        blocks = [perms[g].view(16, HEADS, HEAD_DIM) // HEAD_DIM for g in head.groups]
        # Every block of a head comes from one old head, the same one for query/key and value/output.
        assert torch.equal(blocks[0], blocks[1]) and bool((blocks[0] == blocks[0][..., :1]).all())
        assert torch.equal(blocks[0][..., 0].sort(-1).values, torch.arange(HEADS).expand(16, HEADS))
    # Over 16 draws both heads swap and dimensions move inside a head.
    qk = perms[next(iter(spec.heads.values())).groups[0]]
    assert bool((qk[:, 0] >= HEAD_DIM).any()) and bool((qk[:, :HEAD_DIM] % HEAD_DIM != torch.arange(HEAD_DIM)).any())


def test_permuted_state_dict_computes_the_same_outputs(family):
    model, spec, inputs = family["model"], family["spec"], family["inputs"]
    state_dict = model.state_dict()
    reference = _run(model, state_dict, inputs)
    for seed in range(3):
        perms = spec.random_permutations(torch.Generator().manual_seed(seed))
        permuted = permute_state_dict(state_dict, spec, perms)
        assert sum(not torch.equal(permuted[k], state_dict[k]) for k in state_dict) >= 8  # weights did move
        torch.testing.assert_close(_run(model, permuted, inputs), reference, rtol=0, atol=1e-5)


def test_token_path_computes_the_same_outputs_and_matches_the_state_dict_path(family):
    model, spec, inputs = family["model"], family["spec"], family["inputs"]
    state_dict = model.state_dict()
    layout = TokenLayout.from_module(model, token_size=5)  # rows span several tokens
    permuter = TokenPermuter(layout, spec)
    tokens = layout.tokenize(state_dict)[0][None]
    perms = permuter.sample_permutations(torch.Generator().manual_seed(4), batch_size=1)
    window = permuter.apply(tokens, perms, start=torch.tensor([0]), window_size=layout.num_tokens)[0]
    restored = layout.detokenize(window)
    expected = permute_state_dict(state_dict, spec, {g: p[0] for g, p in perms.items()})
    for key in expected:
        assert torch.equal(restored[key], expected[key]), key
    torch.testing.assert_close(_run(model, restored, inputs), _run(model, state_dict, inputs), rtol=0, atol=1e-5)


def test_weight_matching_recovers_a_random_permutation_and_canonicalizes(family):
    spec, state_dict = family["spec"], family["model"].state_dict()
    perms = spec.random_permutations(torch.Generator().manual_seed(5))
    permuted = permute_state_dict(state_dict, spec, perms)
    found = weight_matching(spec, state_dict, permuted, generator=torch.Generator().manual_seed(0))
    for key, value in permute_state_dict(permuted, spec, found).items():
        assert torch.equal(value, state_dict[key]), key
    # A permuted copy of a slightly perturbed model is mapped back onto the perturbed model itself.
    generator = torch.Generator().manual_seed(6)
    noisy = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=generator) for k, v in state_dict.items()}
    (canonical,) = canonicalize(
        [permute_state_dict(noisy, spec, perms)], state_dict, spec, generator=torch.Generator().manual_seed(0)
    )
    for key, value in canonical.items():
        assert torch.equal(value, noisy[key]), key


def test_spec_with_heads_round_trips_and_rejects_bad_structure(family):
    spec = family["spec"]
    again = PermutationSpec.from_dict(spec.to_dict())
    assert again == spec
    qk = next(iter(spec.heads.values())).groups[0]
    with pytest.raises(ValueError, match="does not split into 3 heads"):
        PermutationSpec(groups=spec.groups, axes=spec.axes, heads={"H": HeadGroup(groups=(qk,), num_heads=3)})
    with pytest.raises(ValueError, match="parts .* add up to 16"):
        PermutationSpec(groups={**spec.groups, "C": 9}, axes={}, concat={"C": (qk, qk)})


def test_unsupported_transformers_families_raise_naming_the_supported_ones():
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="model_type 'llama'.*supported families: bert, gpt2, vit"):
        permutation_spec_from_module(model)


def test_the_zoo_vit_gets_the_spec_of_the_transformers_model_it_wraps():
    from sane_hf.zoo_models import build_zoo_model

    zoo_model = build_zoo_model("vit", hidden_size=HEADS * HEAD_DIM, num_heads=HEADS, intermediate_size=12)
    wrapped = permutation_spec_from_module(zoo_model)
    inner = permutation_spec_from_module(zoo_model.model)

    def prefixed(group):  # group names follow the module names: P_<module> -> P_model.<module>
        return None if group is None else "P_model." + group.removeprefix("P_")

    assert wrapped.axes == {
        f"model.{key}": AxisPermutation(prefixed(a.out_group), prefixed(a.in_group), a.in_block)
        for key, a in inner.axes.items()
    }
    assert wrapped.groups == {prefixed(group): size for group, size in inner.groups.items()}
    assert len(wrapped.heads) == 2
