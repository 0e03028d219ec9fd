"""Tokenize / detokenize speed: sane_hf's vectorized TokenLayout vs the original's per-layer loop, side by side.

Workloads (ISSUE: core):
  * one CIFAR ResNet-18 (100 classes, T=288, BatchNorm incl. running statistics -> 53,704 tokens, 81 layers);
  * a batch of 64 CNN3 checkpoints (T=289 -> 93 tokens each).

The "loop reference" re-implements the original's algorithm (docs/method.md#tokenization: walk the keys, reshape, append
the bias, pad, concatenate; back: a `torch.where` on the layer id per layer) so both run in the same process on
the same data. Prints a table and writes `benchmarks/results/tokenizer.json`.

Usage: `python benchmarks/bench_tokenizer.py [--repeats 30] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sane_hf import TokenLayout
from sane_hf.zoo_models import build_zoo_model


def median_ms(fn, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


def loop_tokenize(state_dict, layout: TokenLayout):
    """The original's shape of work: per layer reshape, append bias, pad, split, then one cat."""
    T = layout.token_size
    tokens, masks, positions = [], [], []
    for index, layer in enumerate(layout.layers):
        rows = state_dict[layer.weight_key].reshape(layer.num_rows, -1)
        if layer.bias_key is not None:
            rows = torch.cat([rows, state_dict[layer.bias_key][:, None]], dim=1)
        width = rows.shape[1]
        padded = F.pad(rows, (0, layer.tokens_per_row * T - width)).reshape(-1, T)
        mask = torch.zeros(layer.num_rows, layer.tokens_per_row * T, dtype=torch.bool)
        mask[:, :width] = True
        row_ids = torch.arange(layer.num_rows).repeat_interleave(layer.tokens_per_row)
        tokens.append(padded)
        masks.append(mask.reshape(-1, T))
        positions.append(torch.stack([torch.full_like(row_ids, index), row_ids], dim=1))
    positions = torch.cat(positions)
    positions = torch.cat([torch.arange(len(positions))[:, None], positions], dim=1)
    return torch.cat(tokens), torch.cat(masks), positions


def loop_detokenize(tokens, positions, layout: TokenLayout, reference):
    """The original's inverse: select each layer's tokens with torch.where on the layer id, reshape, split bias."""
    out = dict(reference)
    for index, layer in enumerate(layout.layers):
        rows = tokens[torch.where(positions[:, 1] == index)[0]].reshape(layer.num_rows, -1)
        width = layer.weight_width
        out[layer.weight_key] = rows[:, :width].reshape(reference[layer.weight_key].shape)
        if layer.bias_key is not None:
            out[layer.bias_key] = rows[:, width]
    return out


def bench(repeats: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)

    resnet = build_zoo_model("resnet18", num_classes=100)
    state_dict = resnet.state_dict()
    layout = TokenLayout.from_module(resnet, token_size=288)
    tokens, mask, positions = layout.tokenize(state_dict)
    buffer = torch.empty_like(tokens)
    weight_bytes = layout.num_values * 4
    token_bytes = tokens.numel() * 4
    work = f"ResNet-18/100, T=288, {layout.num_tokens} tokens"
    measured = {
        "tokenize": median_ms(lambda: layout.tokenize(state_dict), repeats),
        "tokenize (out= buffer)": median_ms(lambda: layout.tokenize(state_dict, out=buffer), repeats),
        "tokenize (no finite check, out=)": median_ms(
            lambda: layout.tokenize(state_dict, out=buffer, check_finite=False), repeats
        ),
        "detokenize (views where aligned)": median_ms(lambda: layout.detokenize(tokens), repeats),
        "detokenize (copy=True)": median_ms(lambda: layout.detokenize(tokens, copy=True), repeats),
        "loop reference tokenize": median_ms(lambda: loop_tokenize(state_dict, layout), repeats),
        "loop reference detokenize": median_ms(
            lambda: loop_detokenize(tokens, positions, layout, state_dict), repeats
        ),
    }
    for name, result in measured.items():
        moved = weight_bytes + token_bytes
        rows.append({"workload": work, "operation": name, **result, "GB_per_s": moved / result["median_ms"] / 1e6})

    cnn = build_zoo_model("cnn3")
    cnn_layout = TokenLayout.from_module(cnn, token_size=289)
    members = []
    for seed in range(64):
        torch.manual_seed(seed)
        members.append(build_zoo_model("cnn3").state_dict())
    batched = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    cnn_tokens = cnn_layout.tokenize(batched)[0]
    work = "64 x CNN3, T=289, 93 tokens each"
    moved = 64 * (cnn_layout.num_values + cnn_layout.num_tokens * 289) * 4
    measured = {
        "tokenize (batched)": median_ms(lambda: cnn_layout.tokenize(batched), repeats),
        "detokenize (batched)": median_ms(lambda: cnn_layout.detokenize(cnn_tokens), repeats),
        "loop reference detokenize (64 calls)": median_ms(
            lambda: [loop_detokenize(t, cnn_layout.positions, cnn_layout, members[0]) for t in cnn_tokens],
            max(3, repeats // 5),
        ),
        "loop reference tokenize (64 calls)": median_ms(
            lambda: [loop_tokenize(m, cnn_layout) for m in members], max(3, repeats // 5)
        ),
    }
    for name, result in measured.items():
        rows.append({"workload": work, "operation": name, **result, "GB_per_s": moved / result["median_ms"] / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "tokenizer.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench(args.repeats)
    print(f"{'workload':40s} {'operation':36s} {'median ms':>10s} {'min ms':>8s} {'GB/s':>6s}")
    for row in rows:
        print(
            f"{row['workload']:40s} {row['operation']:36s} {row['median_ms']:10.2f} {row['min_ms']:8.2f} "
            f"{row['GB_per_s']:6.2f}"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    output.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
