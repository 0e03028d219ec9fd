"""Every benchmark of sane_hf in one command: one table on stdout, `benchmarks/results/all.json` on disk.

Runs, one after the other (never two at once: the project's machines have 2 cores), each in its own process:
`bench_tokenizer.py`, `bench_data.py`, `bench_train.py` (configs (a) and (b) in fp32; bf16 only for (b) where the CPU
has no fast bf16 kernel) and `bench_scale.py` (ResNet-18 conversion at 10 and 40 checkpoints with peak RSS,
two pretraining steps on a ResNet-18 zoo, full-model embedding, sampling one model). Their own JSON files land next to `all.json`.

Each row is compared with the physical bound that applies, measured in the same run:

* token movement (tokenize, detokenize, window loading, conversion) against the memory bandwidth of a plain large
  `copy_` (bytes read + written per second);
* transformer work (training step, embedding, decoding) against a 2048x2048 matmul in the same precision
  (achieved GFLOP/s and the fraction of that rate).

The original implementation's numbers (measured separately in 2026-11 on a machine with avx512_bf16) sit
beside ours. Usage: `python benchmarks/run_all.py [--threads 2] [--quick] [--reuse]` (`--quick`: fewer repeats;
`--reuse`: take the parts already in `benchmarks/results/` and run only the missing ones).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).parent
RESULTS = HERE / "results"

# The original implementation, measured separately on the project's machines (2 cores with avx512_bf16, torch 2.13 CPU).
ORIGINAL = {
    "tokenize_resnet": "100-237 ms",
    "detokenize_resnet": "29 ms",
    "tokenize_cnn3": "25 ms (64 x 0.39 ms)",
    "train_a_fp32": "2,681-2,767 tok/s; 4.1-4.2 GB",
    "train_a_bf16": "3,276-4,063 tok/s; 2.9 GB",
    "pretrain_resnet": "5.9-6.1 s/step (step alone); 4.1-4.2 GB",
    "embed": "7.65-8.06 s (bf16 3.92 s)",
    "sample": "36.7 s",
}
GOALS = {
    "tokenize_resnet": "<= 10 ms",
    "detokenize_resnet": "<= 10 ms",
    "tokenize_cnn3": "<= 2 ms",
    "convert_resnet": "< 1 s/ckpt",
    "train_a_fp32": ">= 1.3x tok/s",
    "embed": "<= 3 s",
    "sample": "<= 4 s",
}


def machine_bounds(threads: int) -> dict:
    """Memory bandwidth of a plain copy and matmul rates, measured now (medians of 5)."""
    import torch

    torch.set_num_threads(threads)

    def median_s(fn, repeats: int = 5) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    source = torch.randn(64 << 20)  # 256 MB, far beyond the caches
    target = torch.empty_like(source)
    copy_s = median_s(lambda: target.copy_(source))
    rates = {}
    for name, dtype, size in (("fp32", torch.float32, 2048), ("bf16", torch.bfloat16, 512)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        rates[name] = 2 * size**3 / median_s(lambda a=a, b=b: a @ b) / 1e9
        rates[f"{name}_size"] = size
    return {
        "copy_GB_per_s": 2 * source.numel() * 4 / copy_s / 1e9,  # read + write
        "matmul_fp32_gflops_per_s": rates["fp32"],
        "matmul_bf16_gflops_per_s": rates["bf16"],
        "matmul_bf16_size": rates["bf16_size"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
    }


REUSE = False  # --reuse: take a part's JSON from an earlier run instead of running it again


def run(script: str, *args: str, tag: str = "") -> dict:
    """Run one benchmark script (its own process) and return its JSON output (`results/<name><tag>.json`)."""
    output = RESULTS / f"{Path(script).stem.removeprefix('bench_')}{tag}.json"
    if REUSE and output.is_file():
        print(f"reusing {output}", flush=True)
        return json.loads(output.read_text())
    command = [sys.executable, str(HERE / script), *args, "--output", str(output)]
    print(f"$ {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(output.read_text())


def _find(rows: list[dict], **match) -> dict | None:
    for row in rows:
        if all(str(row.get(k, "")).startswith(v) for k, v in match.items()):
            return row
    return None


def build_table(bounds: dict, tok: dict, data: dict, train: list[dict], scale: dict) -> list[dict]:
    copy_bw = bounds["copy_GB_per_s"]
    fp32, bf16 = bounds["matmul_fp32_gflops_per_s"], bounds["matmul_bf16_gflops_per_s"]
    table = []

    def add(key, work, ours, bound="", original=None):
        table.append(
            {"key": key, "work": work, "ours": ours, "bound": bound, "original": original or ORIGINAL.get(key, "-")}
        )
        table[-1]["goal"] = GOALS.get(key, "-")

    t = tok["results"]
    for key, workload, operation, label in (
        ("tokenize_resnet", "ResNet", "tokenize", "tokenize one ResNet-18/100 (53,704 x 288)"),
        ("tokenize_resnet_out", "ResNet", "tokenize (out= buffer)", "  the same into a reused buffer"),
        ("detokenize_resnet", "ResNet", "detokenize (views", "detokenize one ResNet-18 (views where aligned)"),
        ("detokenize_resnet_copy", "ResNet", "detokenize (copy=True)", "  the same, copy=True"),
        ("tokenize_cnn3", "64 x CNN3", "tokenize (batched)", "tokenize 64 CNN3 (one batched call)"),
        ("detokenize_cnn3", "64 x CNN3", "detokenize (batched)", "detokenize 64 CNN3 (one batched call)"),
    ):
        row = _find(t, workload=workload, operation=operation)
        if row is None or (operation == "tokenize" and row["operation"] != "tokenize"):
            row = next((r for r in t if r["workload"].startswith(workload) and r["operation"] == operation), None)
        if row:
            bound = f"{row['GB_per_s']:.1f} GB/s = {row['GB_per_s'] / copy_bw:.0%} of copy"
            if "views" in operation:
                bound = "aligned layers are views (not copied): no bandwidth bound"
            add(key, label, f"{row['median_ms']:.2f} ms", bound)

    for row in data["results"]:
        if "checkpoints_per_s" in row:
            add(
                f"convert_{row['workload'].split()[0]}",
                f"convert {row['workload']} (T={row['token_size']})",
                f"{row['checkpoints_per_s']:.1f} ckpt/s ({row['median_s'] / row['checkpoints']:.3f} s/ckpt)",
                f"{row['token_MB_per_s']:.0f} MB/s of tokens = {row['token_MB_per_s'] / 1e3 / copy_bw:.1%} of copy",
            )
        elif row["operation"].startswith("WindowDataLoader"):
            add(
                "windows",
                f"{row['operation']}, {row['workload'].split()[0]}, {row['batch']}",
                f"{row['median_ms_per_batch']:.2f} ms/batch",
                f"{row['read_MB_per_s'] / 1e3:.2f} GB/s read = {row['read_MB_per_s'] / 1e3 / copy_bw:.0%} of copy",
            )

    for row in scale["results"]:
        if row["row"].startswith("convert"):
            add(
                "convert_resnet",
                f"convert {row['checkpoints']} ResNet-18/100 checkpoints (streamed)",
                f"{row['s_per_checkpoint']:.2f} s/ckpt (CPU {row['cpu_s_per_checkpoint']:.2f} s); "
                f"peak RSS {row['peak_rss_gb']:.2f} GB",
                f"{row['shards']} shards <= {row['largest_shard_MB']:.0f} MB",
            )

    for row in train:
        key = f"train_{row['config']}_{row['precision']}"
        peak = fp32 if row["precision"] == "fp32" else bf16
        add(
            key,
            f"training step, config ({row['config']}), {row['precision']}",
            f"{row['tokens_per_s']:,.0f} tok/s ({row['step_s_median']:.2f} s/step); peak {row['peak_rss_gb']:.2f} GB",
            f"{row['gflops_per_s']:.1f} GFLOP/s = {row['gflops_per_s'] / peak:.0%} of {row['precision']} matmul",
        )
    if not any(r["config"] == "a" and r["precision"] == "bf16" for r in train):
        add(
            "train_a_bf16",
            "training step, config (a), bf16",
            "not measurable here",
            f"no bf16 kernel on {bounds['cpu_capability']}: {bf16:.2f} GFLOP/s -> ~{840 / bf16 / 60:.0f} min/step",
        )

    for row in scale["results"]:
        if row["row"] == "pretrain":
            add(
                "pretrain_resnet",
                f"pretrain, config (a), {row['checkpoints']} ResNet-18 checkpoints, permutation augmentation",
                f"{row['s_per_step_incl_validation']:.1f} s/step incl. validation; peak {row['peak_rss_gb']:.2f} GB",
                "batches read windows + permuted layers, not checkpoints",
            )
        elif row["row"] == "embed":
            add(
                "embed",
                f"embed one ResNet-18, config (a), fp32 ({row['windows']} haloed windows)",
                f"{row['s_per_model']:.2f} s/model (CPU {row['cpu_s_per_model']:.1f} s); peak {row['peak_rss_gb']:.2f} GB",
                f"{row['gflops_per_s']:.1f} GFLOP/s = {row['gflops_per_s'] / fp32:.0%} of fp32 matmul",
            )
        elif row["row"] == "sample":
            add(
                "sample",
                "sample one ResNet-18 (KDE + haloed decode + detokenize + load)",
                f"{row['s_per_model']:.2f} s/model, CPU {row['cpu_s_per_model']:.1f} s "
                f"(KDE {row['kde_s'] * 1e3:.0f} ms, decode {row['decode_s']:.2f} s, "
                f"detok {row['detokenize_s'] * 1e3:.0f} ms, load {row['load_s'] * 1e3:.0f} ms); "
                f"peak {row['peak_rss_gb']:.2f} GB",
                f"decode {row['decode_gflops_per_s']:.1f} GFLOP/s = {row['decode_gflops_per_s'] / fp32:.0%} of fp32",
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the compute-bound rows.")
    parser.add_argument("--quick", action="store_true", help="Fewer repeats and steps.")
    parser.add_argument(
        "--reuse", action="store_true", help="Reuse results/<part>.json files of earlier runs; run only missing parts."
    )
    parser.add_argument("--output", default=str(RESULTS / "all.json"))
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    RESULTS.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    start = time.perf_counter()
    bounds = machine_bounds(args.threads)
    print(
        f"copy {bounds['copy_GB_per_s']:.1f} GB/s (read+write), matmul fp32 {bounds['matmul_fp32_gflops_per_s']:.1f} "
        f"GFLOP/s, bf16 {bounds['matmul_bf16_gflops_per_s']:.2f} GFLOP/s ({bounds['cpu_capability']})",
        flush=True,
    )
    tok = run("bench_tokenizer.py", "--repeats", "10" if args.quick else "20", "--threads", threads)
    data = run("bench_data.py", "--repeats", "1", "--batches", "20" if args.quick else "40")
    steps = ["--steps", "2" if args.quick else "3", "--warmup", "1", "--threads", threads]
    train = run("bench_train.py", "--configs", "a", "b", "--precisions", "fp32", *steps)["results"]
    # bf16 only where it finishes: without AVX-512 torch has no fast bf16 matmul (~1 GFLOP/s here).
    bf16_args = ["--configs", "b", "--precisions", "bf16", "--steps", "1", "--warmup", "1", "--threads", threads]
    train += run("bench_train.py", *bf16_args, tag="_bf16")["results"]
    scale = run("bench_scale.py", "--repeats", "2", "--threads", threads)
    table = build_table(bounds, tok, data, train, scale)

    widths = [max(len(str(r[c])) for r in table) for c in ("work", "ours", "bound", "original", "goal")]
    header = ("work", "ours (this machine)", "vs bound", "original", "goal")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    print("\n" + " | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in table:
        cells = (row["work"], row["ours"], row["bound"], row["original"], row["goal"])
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    output = Path(args.output)
    payload = {
        "bounds": bounds,
        "table": table,
        "seconds": time.perf_counter() - start,
        "parts": {"tokenizer": tok, "data": data, "train": train, "scale": scale},
    }
    output.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {output} ({payload['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
