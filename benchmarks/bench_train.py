"""Training-step speed and peak memory of SANE pretraining, fp32 and bf16 (issue: pretraining).

Configs:
  (a) the original's config A: T=288, d_model 256, 8 heads, 4+4 blocks, latent 128, window 256, batch 32,
      max_positions [55000, 100, 550] (14.6 M parameters);
  (b) the embedded default (scripts/configs/pretrain_digits_cnn.yaml): T=64, d_model 64, 4 heads, 2+2 blocks,
      latent 32, window = the 66-token digits CNN, batch 64.

One step = what `sane_hf.training.loop.train_step` does for a batch (two views of B windows, noise, one forward
of both views, reconstruction + NT-Xent loss) plus backward and an AdamW step. Tokens/s counts both views
(2 * B * W per step), as the original's own numbers do (32 * 256 * 2 / 6 s = 2,730 tokens/s). Each
(config, precision) runs in a fresh process so its peak RSS is its own; medians over steps after warm-up.

Usage: `python benchmarks/bench_train.py [--steps 5] [--configs a b] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


CONFIGS = {
    "a": dict(
        token_size=288,
        d_model=256,
        n_heads=8,
        n_layers=4,
        latent_dim=128,
        window_size=256,
        batch_size=32,
        max_positions=[55000, 100, 550],
        num_tokens=53704,
        num_layers=81,
    ),
    "b": dict(
        token_size=64,
        d_model=64,
        n_heads=4,
        n_layers=2,
        latent_dim=32,
        window_size=66,
        batch_size=64,
        max_positions=[66, 5, 20],
        num_tokens=66,
        num_layers=5,
    ),
    "q": dict(  # the quickstart's default SANE (sane_hf/quickstart.py PRESETS["default"]) on its 8-layer CNN zoo
        token_size=64,
        d_model=64,
        n_heads=4,
        n_layers=2,
        latent_dim=64,
        window_size=128,
        batch_size=32,
        max_positions=[400, 10, 80],
        num_tokens=375,
        num_layers=9,
    ),
}
ORIGINAL = {  # the original, measured separately (2026-11): tokens/s and peak RSS (GB)
    ("a", "fp32"): {"tokens_per_s": "2,681-2,767", "peak_rss_gb": "4.1-4.2"},
    ("a", "bf16"): {"tokens_per_s": "3,276-4,063", "peak_rss_gb": "2.9"},
}


def matmul_gflops(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype_name])
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def build_training_step(
    name: str,
    batch_size: int,
    precision: str,
    device: str = "cpu",
    compile_model: bool = False,
    retain_freed_memory: bool = True,
):
    """A randomly initialized SANE of config `name`, a synthetic window batch and a closure running one full
    training step on them (two views, forward, `sane_loss`, backward, AdamW step), as the pretraining loop does
    (including its `retain_freed_memory` default: `sane_hf.utils.allocation`).

    Shared by this script (CPU) and `gpu_check.py` (CUDA). Returns `(model, step, tokens_per_step,
    flops_per_step)`; FLOPs of forward + backward ~ 6 x (non-embedding parameters) x tokens (the projection head's
    once per window instead) plus the attention scores, 12 x layers x window x d_model per token.
    """
    import torch

    from sane_hf.models.sane import SaneConfig, SaneModel, SaneModelOutput
    from sane_hf.training.augmentations import make_two_views
    from sane_hf.training.losses import sane_loss
    from sane_hf.training.optim import make_sane_optimizer
    from sane_hf.utils.allocation import retain_freed_memory as retain

    if retain_freed_memory:
        retain()
    torch.manual_seed(0)
    c = CONFIGS[name]
    config = SaneConfig(
        token_size=c["token_size"],
        d_model=c["d_model"],
        n_heads=c["n_heads"],
        n_layers=c["n_layers"],
        latent_dim=c["latent_dim"],
        window_size=c["window_size"],
        max_positions=c["max_positions"],
    )
    model = SaneModel(config).to(device).train()
    optimizer = make_sane_optimizer(model, lr=1e-4, weight_decay=3e-9)
    forward = torch.compile(model) if compile_model else model
    B, W, T = batch_size, c["window_size"], c["token_size"]
    generator = torch.Generator(device=device).manual_seed(0)
    starts = torch.randint(0, c["num_tokens"] - W + 1, (B,), generator=generator, device=device)
    index = starts[:, None] + torch.arange(W, device=device)
    positions = torch.stack([index, index * c["num_layers"] // c["num_tokens"], index % c["max_positions"][2]], -1)
    batch = {
        "tokens": torch.randn(B, W, T, generator=generator, device=device),
        "mask": torch.ones(B, W, T, dtype=torch.bool, device=device),
        "positions": positions,
        "start": starts,
    }
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        view_1, view_2 = make_two_views(
            batch, None, noise_multiplicative=0.1, permute_view_2=False, generator=generator
        )
        with autocast:
            out = forward(
                tokens=torch.cat([view_1["tokens"], view_2["tokens"]]),
                positions=torch.cat([view_1["positions"], view_2["positions"]]),
            )
        z, y, p = out.latents.float(), out.reconstructions.float(), out.projections.float()
        losses = sane_loss(SaneModelOutput(z[:B], y[:B], p[:B]), SaneModelOutput(z[B:], y[B:], p[B:]), view_1, view_2)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = 2 * B * W
    per_window = sum(p.numel() for n, p in model.named_parameters() if n.startswith("projection_head."))
    per_token = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "position_embedding" not in n and not n.startswith("projection_head.")
    )
    layers = config.n_layers + config.n_decoder_layers
    # The projection head flattens a whole window into one vector: it runs once per window (2B of them), not per token.
    flops = 6 * per_token * tokens + 6 * per_window * 2 * B + 12 * layers * W * config.d_model * tokens
    return model, step, tokens, flops


def run_one(name: str, precision: str, steps: int, warmup: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    model, step, tokens, flops = build_training_step(name, CONFIGS[name]["batch_size"], precision)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "config": name,
        "precision": precision,
        "parameters": model.num_parameters(),
        "step_s_median": seconds,
        "step_s_min": min(times),
        "tokens_per_s": tokens / seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "steps": steps,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["a", "b"], choices=sorted(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.steps, args.warmup, args.threads)))
        return

    import torch

    torch.set_num_threads(args.threads)
    # bf16 at 512: without AVX-512 a 2048^2 bf16 matmul alone takes ~30-60 s (no fast kernel).
    peak = {p: matmul_gflops(p, size=2048 if p == "fp32" else 512) for p in args.precisions}
    rows = []
    for name in args.configs:
        for precision in args.precisions:
            command = [
                sys.executable,
                __file__,
                "--one",
                name,
                precision,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row["matmul_gflops_per_s"] = peak[precision]
            row["original"] = ORIGINAL.get((name, precision))
            rows.append(row)
    print("machine matmul (fp32 2048^2, bf16 512^2): " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peak.items()))
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    header = f"{'config':6s} {'prec':5s} {'params':>8s} {'step s':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'peak GB':>8s}  original"
    print(header)
    for r in rows:
        original = r["original"] or {}
        print(
            f"{r['config']:6s} {r['precision']:5s} {r['parameters'] / 1e6:7.2f}M {r['step_s_median']:8.3f} "
            f"{r['tokens_per_s']:9.0f} {r['gflops_per_s']:8.1f} {r['peak_rss_gb']:8.2f}  "
            f"{original.get('tokens_per_s', '-')} tok/s, {original.get('peak_rss_gb', '-')} GB"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    output.write_text(json.dumps({"meta": meta, "matmul_gflops_per_s": peak, "results": rows}, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
