"""GPU check: SANE training step and full-model embedding on one CUDA device (tokens/s, model FLOP utilization).

Prepared for the `device` machines (one NVIDIA H200); a short run (about 2-4 minutes including start-up):

```bash
python benchmarks/gpu_check.py --output "$OUT/gpu.json"          # or: bash benchmarks/gpu_check.sh
```

What it measures, for config (a) of the pretraining issue (T=288, d_model 256, 8 heads, 4+4 blocks, latent 128,
window 256, max_positions [55000, 100, 550]):

* the measured matmul peak of the device (8192x8192, fp32 with TF32 off and on, bf16);
* training steps (two views of B windows, noise, forward of both views, reconstruction + NT-Xent, backward, AdamW),
  fp32 and bf16 autocast, at batch 32 (the config) and at larger batches (`--batch-sizes`): tokens/s
  (2 * B * W per step), achieved TFLOP/s with the same FLOP count as `bench_train.py`, and model FLOP utilization
  (MFU) against both the measured bf16 matmul rate and the datasheet peak (`--peak-tflops`, 989 for an H200's dense
  bf16);
* embedding one full ResNet-18 (53,704 tokens, 420 haloed windows of 256) in fp32 and bf16: s/model.

The SANE is randomly initialized (speed does not depend on training). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))


def _sync(torch) -> None:
    torch.cuda.synchronize()


def timed(torch, fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(torch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(torch)
        times.append(time.perf_counter() - start)
    return times


def matmul_tflops(torch, dtype, tf32: bool, size: int = 8192) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    seconds = statistics.median(timed(torch, lambda: a @ b, 10, 3))
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * size**3 / seconds / 1e12


def train_step_row(torch, batch_size: int, precision: str, steps: int, compile_model: bool) -> dict:
    from bench_train import build_training_step

    model, step, tokens, flops = build_training_step("a", batch_size, precision, "cuda", compile_model)
    torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(timed(torch, step, steps, 3))
    return {
        "row": "train",
        "config": "a",
        "batch_size": batch_size,
        "precision": precision,
        "compile": compile_model,
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def embed_row(torch, precision: str, batch_size: int, repeats: int) -> dict:
    from bench_scale import CONFIG_A, haloed_pass_flops

    from sane_hf.models.sane import SaneConfig, SaneModel
    from sane_hf.tokenization import TokenLayout
    from sane_hf.zoo_models import build_zoo_model

    torch.manual_seed(0)
    resnet = build_zoo_model("resnet18", num_classes=100)
    layout = TokenLayout.from_module(resnet, token_size=288, tokenize_bn_stats=True)
    tokens = layout.tokenize(resnet.state_dict())[0][None].cuda()
    positions = layout.positions.cuda()
    sane = SaneModel(SaneConfig(**CONFIG_A)).cuda().eval()

    def embed() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            sane.embed(tokens, positions, batch_size=batch_size)

    seconds = statistics.median(timed(torch, embed, repeats, 2))
    flops = haloed_pass_flops(sane.config, layout.num_tokens, "encoder")
    return {
        "row": "embed",
        "precision": precision,
        "batch_size": batch_size,
        "s_per_model": seconds,
        "tflops_per_s": flops / seconds / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile'd bf16 steps.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Datasheet dense bf16 peak (H200: 989).")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device (torch.cuda.is_available() is False).")
    device = torch.cuda.get_device_name()
    peaks = {
        "fp32": matmul_tflops(torch, torch.float32, tf32=False),
        "tf32": matmul_tflops(torch, torch.float32, tf32=True),
        "bf16": matmul_tflops(torch, torch.bfloat16, tf32=False),
    }
    print(f"{device}: matmul 8192^2 " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peaks.items()), flush=True)
    rows = []
    for batch_size in args.batch_sizes:
        for precision in ("fp32", "bf16"):
            rows.append(train_step_row(torch, batch_size, precision, args.steps, False))
            print(json.dumps(rows[-1]), flush=True)
    if args.compile:
        for batch_size in args.batch_sizes:
            rows.append(train_step_row(torch, batch_size, "bf16", args.steps, True))
            print(json.dumps(rows[-1]), flush=True)
    for precision in ("fp32", "bf16"):
        rows.append(embed_row(torch, precision, 420, 5))
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        peak = peaks["bf16"] if row["precision"] == "bf16" else peaks["fp32"]
        row["mfu_vs_measured_matmul"] = row["tflops_per_s"] / peak
        row["mfu_vs_datasheet_bf16"] = row["tflops_per_s"] / args.peak_tflops
    print(
        f"\n{'row':6s} {'prec':5s} {'B':>4s} {'compile':>7s} {'tokens/s or s/model':>20s} {'TFLOP/s':>8s} {'MFU':>6s}"
    )
    for r in rows:
        speed = f"{r['tokens_per_s']:,.0f} tok/s" if r["row"] == "train" else f"{r['s_per_model']:.3f} s/model"
        print(
            f"{r['row']:6s} {r['precision']:5s} {r['batch_size']:4d} {str(r.get('compile', '-')):>7s} {speed:>20s} "
            f"{r['tflops_per_s']:8.1f} {r['mfu_vs_measured_matmul']:6.1%}"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "torch": torch.__version__, "matmul_tflops": peaks, "datasheet_bf16": args.peak_tflops}
    output.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
