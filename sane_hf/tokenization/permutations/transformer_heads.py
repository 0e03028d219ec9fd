"""Permutation specs of transformers models: attention heads moved whole, query/key and value/output dimensions
inside each head, feed-forward hidden units (docs/method.md#transformer-symmetries)."""

from __future__ import annotations

from torch import nn

from .spec import AxisPermutation, HeadGroup, PermutationSpec, _SpecBuilder


# head per query head, no rotary embedding (which pairs query/key dimensions, so they could not move freely).
TRANSFORMER_FAMILIES = ("bert", "gpt2", "vit")


def _transformers_config(model: nn.Module):
    """The config of `model`, or of the transformers model it wraps (e.g. the zoo's `ViTClassifier`); else None."""
    for module in (model, *model.children()):
        config = getattr(module, "config", None)
        if isinstance(getattr(config, "model_type", None), str) and hasattr(module, "base_model_prefix"):
            return config
    return None


def _is_conv1d(module: nn.Module | None) -> bool:
    """transformers' `Conv1D` (GPT-2): a Linear whose weight is stored `[in, out]`."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _transformer_spec(model: nn.Module) -> PermutationSpec:
    """Attention heads and feed-forward units of a BERT, ViT or GPT-2 model (docs/method.md#transformer-symmetries).

    Per attention module: a query/key group (rows of the query and key projections), a value/output group (rows of
    the value projection, columns of the output projection) and a `HeadGroup` over both, so whole heads move together
    and, inside a head, the query/key and the value/output dimensions are permuted freely. Per feed-forward block: one
    group for its hidden units. GPT-2's fused `c_attn` (`Conv1D`, `[in, 3 * hidden]`) is a concatenated group
    `[query/key | query/key | value/output]`. The residual stream (embeddings, LayerNorms, pooler, classifier, tied
    LM head) is not permuted; docs/method.md#transformer-symmetries says why.
    """
    config = _transformers_config(model)
    name = type(model).__name__
    family = config.model_type
    if family not in TRANSFORMER_FAMILIES:
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: the symmetries of transformers model_type {family!r} are "
            f"not known; supported families: {', '.join(TRANSFORMER_FAMILIES)}."
        )
    position = getattr(config, "position_embedding_type", "absolute")
    if position not in (None, "absolute") or getattr(config, "add_cross_attention", False):
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: position_embedding_type={position!r}, "
            f"add_cross_attention={getattr(config, 'add_cross_attention', False)!r}; expected absolute position "
            "embeddings and no cross-attention."
        )
    num_heads = config.num_attention_heads
    builder = _SpecBuilder(model)
    heads: dict[str, HeadGroup] = {}
    concat: dict[str, tuple[str, ...]] = {}

    def attention(prefix: str, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, fused: bool) -> None:
        qk_size = q.weight.shape[1] // 3 if fused else q.out_features
        vo_size = o.weight.shape[0] if fused else o.in_features
        if qk_size % num_heads or vo_size % num_heads:
            raise ValueError(
                f"Cannot derive a permutation spec for {name}: attention `{prefix}` has {qk_size} query/key and "
                f"{vo_size} value units, not multiples of num_attention_heads={num_heads}."
            )
        qk = builder.new_group(f"P_{prefix}.qk", qk_size)
        vo = builder.new_group(f"P_{prefix}.vo", vo_size)
        heads[f"H_{prefix}"] = HeadGroup(groups=(qk, vo), num_heads=num_heads)
        if fused:  # Conv1D: axis 1 of the weight and axis 0 of the bias are the outputs
            qkv = builder.new_group(f"P_{prefix}.c_attn", 2 * qk_size + vo_size)
            concat[qkv] = (qk, qk, vo)
            builder.axes[f"{prefix}.c_attn.weight"] = AxisPermutation(in_group=qkv)
            builder.axes[f"{prefix}.c_attn.bias"] = AxisPermutation(out_group=qkv)
            builder.axes[f"{prefix}.c_proj.weight"] = AxisPermutation(out_group=vo)
            return
        for module, group in ((q, qk), (k, qk), (v, vo)):
            builder.add_module(module_names[module], module, group)
        builder.add_module(module_names[o], o, None, vo)

    def feed_forward(up: nn.Module, down: nn.Module, prefix: str) -> None:
        group = f"P_{prefix}" if prefix.endswith(".mlp") else f"P_{prefix}.mlp"
        if _is_conv1d(up):
            hidden = builder.new_group(group, up.weight.shape[1])
            builder.axes[f"{module_names[up]}.weight"] = AxisPermutation(in_group=hidden)
            builder.axes[f"{module_names[up]}.bias"] = AxisPermutation(out_group=hidden)
            builder.axes[f"{module_names[down]}.weight"] = AxisPermutation(out_group=hidden)
            return
        hidden = builder.new_group(group, up.out_features)
        builder.add_module(module_names[up], up, hidden)
        builder.add_module(module_names[down], down, None, hidden)

    module_names = {module: prefix for prefix, module in model.named_modules()}
    for prefix, module in model.named_modules():
        children = dict(module.named_children())
        projections = [children.get(c) for c in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if family == "vit" and all(isinstance(p, nn.Linear) for p in projections):
            attention(prefix, *projections, fused=False)
        elif family == "vit" and all(isinstance(children.get(c), nn.Linear) for c in ("fc1", "fc2")):
            feed_forward(children["fc1"], children["fc2"], prefix)
        elif family == "bert" and {"self", "output"} <= set(children) and hasattr(children["self"], "query"):
            self_attention, output = children["self"], children["output"]
            attention(prefix, self_attention.query, self_attention.key, self_attention.value, output.dense, False)
        elif family == "bert" and {"attention", "intermediate", "output"} <= set(children):
            feed_forward(children["intermediate"].dense, children["output"].dense, prefix)
        elif family == "gpt2" and _is_conv1d(children.get("c_attn")) and _is_conv1d(children.get("c_proj")):
            attention(prefix, children["c_attn"], None, None, children["c_proj"], fused=True)
        elif family == "gpt2" and _is_conv1d(children.get("c_fc")) and _is_conv1d(children.get("c_proj")):
            feed_forward(children["c_fc"], children["c_proj"], prefix)
    if not heads:
        raise ValueError(
            f"Cannot derive a permutation spec for {name}: no attention module of the {family} family was found."
        )
    # Everything else reads or writes the residual stream, which stays in place.
    for key, value in builder.state_dict.items():
        if value.is_floating_point() and key not in builder.axes:
            builder.axes[key] = AxisPermutation()
    return PermutationSpec(groups=dict(builder.groups), axes=dict(builder.axes), heads=heads, concat=concat)
