"""Levers of issue 18 measured one at a time, each variant in its own process (run the variants alternately and
compare medians side by side; BENCHMARKS.md's levers table quotes them). sane_hf only; no original code.

    SANE_CHECKOUT=<checkout> python levers.py train_views {concatenated,separate} {fp32,bf16} {retain,default}
        one training step of config (a): both views in one forward of 2B windows (what bench_train's step and the
        pretraining loop do) or two forwards of B; with or without `retain_freed_memory`
    SANE_CHECKOUT=<checkout> python levers.py bf16_attention
        attention forward + backward of one config (a) layer in bf16 (64 windows x 8 heads x 256 tokens x 32):
        `_CpuFlashAttentionFp32` (the float32 flash kernel) against a chunked bmm attention (bf16 matmuls, float32
        softmax recomputed in the backward pass, the flash kernel's memory), and their errors against float64
    SANE_CHECKOUT=<checkout> python levers.py embed {autocast,bf16_weights} [snippets_per_pass]
        embedding one ResNet-18 in bf16: under autocast (float32 weights) or with the model cast to bfloat16
    SANE_CHECKOUT=<checkout> python levers.py convert {retain,default}
        converting 8 ResNet-18 checkpoints (bench_scale's convert row) with or without `retain_freed_memory`
    SANE_CHECKOUT=<checkout> python levers.py tokenize {retain,default}
        12 calls tokenizing one ResNet-18 into fresh output in a fresh process (the first call and the median of the
        rest), with or without `retain_freed_memory`; run it for two checkouts to compare how they allocate
"""

import functools
import json
import os
import resource
import statistics
import sys
import time

import torch
from common import bench


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train_views(layout: str, precision: str, memory: str) -> dict:
    import bench_train

    from sane_hf.models.sane import SaneModelOutput
    from sane_hf.training.augmentations import make_two_views
    from sane_hf.training.losses import sane_loss

    model, step, _, _ = bench_train.build_training_step(
        "a", bench_train.CONFIGS["a"]["batch_size"], precision, retain_freed_memory=memory == "retain"
    )
    if layout == "separate":
        # The closure's own batch, generator and optimizer, so both layouts run the same step on the same data.
        state = dict(zip(step.__code__.co_freevars, (cell.cell_contents for cell in step.__closure__)))
        batch, generator, optimizer = state["batch"], state["generator"], state["optimizer"]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def step() -> None:
            view_1, view_2 = make_two_views(
                batch, None, noise_multiplicative=0.1, permute_view_2=False, generator=generator
            )
            with autocast:
                outputs = [model(tokens=v["tokens"], positions=v["positions"]) for v in (view_1, view_2)]
            as_float = [
                SaneModelOutput(o.latents.float(), o.reconstructions.float(), o.projections.float()) for o in outputs
            ]
            sane_loss(*as_float, view_1, view_2)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return {**bench(step, 2, 4), "peak_rss_gb": _peak_rss_gb()}


class _ChunkedBmmAttention(torch.autograd.Function):
    """softmax(QK^T / sqrt(d)) V with bf16 matmuls and a float32 softmax, a few windows at a time; the backward pass
    recomputes the probabilities from the saved log-sum-exp (what a flash kernel stores)."""

    @staticmethod
    def forward(ctx, query, key, value, chunk):
        scale = query.shape[-1] ** -0.5
        out = torch.empty_like(query)
        logsumexp = query.new_empty(query.shape[:3], dtype=torch.float32)
        for start in range(0, query.shape[0], chunk):
            part = slice(start, start + chunk)
            scores = torch.matmul(query[part], key[part].transpose(-1, -2)).float().mul_(scale)
            part_logsumexp = torch.logsumexp(scores, -1, keepdim=True)
            probabilities = scores.sub_(part_logsumexp).exp_()
            out[part] = torch.matmul(probabilities.to(query.dtype), value[part])
            logsumexp[part] = part_logsumexp.squeeze(-1)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, logsumexp = ctx.saved_tensors
        scale = query.shape[-1] ** -0.5
        grads = [torch.empty_like(t) for t in (query, key, value)]
        grad_out = grad_out.contiguous()
        for start in range(0, query.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            scores = torch.matmul(query[part], key[part].transpose(-1, -2)).float().mul_(scale)
            probabilities = scores.sub_(logsumexp[part].unsqueeze(-1)).exp_()
            grads[2][part] = torch.matmul(probabilities.to(query.dtype).transpose(-1, -2), grad_out[part])
            grad_probabilities = torch.matmul(grad_out[part], value[part].transpose(-1, -2)).float()
            row_dot = (grad_out[part].float() * out[part].float()).sum(-1, keepdim=True)
            grad_scores = probabilities.mul_(grad_probabilities.sub_(row_dot)).mul_(scale).to(query.dtype)
            grads[0][part] = torch.matmul(grad_scores, key[part])
            grads[1][part] = torch.matmul(grad_scores.transpose(-1, -2), query[part])
        return (*grads, None)


def _chunked_bmm_attention(chunk, query, key, value):
    return _ChunkedBmmAttention.apply(query, key, value, chunk)


def _attention_forward_backward(attention, inputs, grad):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = attention(*leaves)
    out.backward(grad)
    return out, leaves


def bf16_attention() -> dict:
    from sane_hf.models.sane.modeling_sane import _CpuFlashAttentionFp32

    shape = (64, 8, 256, 32)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)).bfloat16() for i in range(3)]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(3)).bfloat16()
    exact = [t.double().requires_grad_() for t in inputs]
    exact_out = torch.nn.functional.scaled_dot_product_attention(*exact)
    exact_out.backward(grad.double())
    variants = {"float32 flash kernel": lambda q, k, v: _CpuFlashAttentionFp32.apply(q, k, v, None)}
    for chunk in (1, 2, 8):
        variants[f"chunked bmm, {chunk} windows a chunk"] = functools.partial(_chunked_bmm_attention, chunk)
    results = {}
    for name, attention in variants.items():
        forward_backward = functools.partial(_attention_forward_backward, attention, inputs, grad)
        out, leaves = forward_backward()
        results[name] = {
            **bench(forward_backward, 2, 7),
            "max_abs_error_out": (out.double() - exact_out).abs().max().item(),
            "max_abs_error_grad_query": (leaves[0].grad.double() - exact[0].grad).abs().max().item(),
        }
    return results


def embed(variant: str, snippets_per_pass: int | None) -> dict:
    import bench_scale

    model, layout = bench_scale._resnet_layout(torch)
    tokens = layout.tokenize(model.state_dict())[0][None]
    sane = bench_scale._sane(torch)
    if variant == "bf16_weights":
        sane = sane.to(torch.bfloat16)

        def run():
            return sane.embed(tokens.bfloat16(), layout.positions, batch_size=snippets_per_pass)
    else:

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return sane.embed(tokens, layout.positions, batch_size=snippets_per_pass)

    return bench(run, 1, 3)


def convert(memory: str) -> dict:
    import bench_scale

    from sane_hf.utils.allocation import retain_freed_memory

    if memory == "retain":
        retain_freed_memory()
    return bench_scale.run_convert(8)


def tokenize(memory: str) -> dict:
    import bench_scale

    if memory == "retain":
        from sane_hf.utils.allocation import retain_freed_memory

        retain_freed_memory()
    model, layout = bench_scale._resnet_layout(torch)
    state_dict = model.state_dict()
    times = []
    for _ in range(12):
        start = time.perf_counter()
        tokens = layout.tokenize(state_dict)
        times.append(time.perf_counter() - start)
        del tokens
    return {"first_call_s": times[0], "median_of_the_rest_s": statistics.median(times[1:]), "times_s": times}


if __name__ == "__main__":
    lever, arguments = sys.argv[1], sys.argv[2:]
    if lever == "train_views":
        result = train_views(*arguments)
    elif lever == "bf16_attention":
        result = bf16_attention()
    elif lever == "embed":
        result = embed(arguments[0], int(arguments[1]) if len(arguments) > 1 else None)
    elif lever == "convert":
        result = convert(*arguments)
    elif lever == "tokenize":
        result = tokenize(*arguments)
    else:
        raise SystemExit(f"unknown lever {lever!r}; expected train_views, bf16_attention, embed, convert or tokenize")
    print(json.dumps({"lever": lever, "arguments": arguments, "threads": torch.get_num_threads(), **result}))
