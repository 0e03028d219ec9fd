"""ResNet-18 at full size: streaming conversion (peak RSS vs zoo size), embedding and sampling one model.

Rows (each in a fresh subprocess, so every peak RSS is that work's own):

* `convert N`: `convert_zoo` on a zoo of N random-init ResNet-18/100 checkpoints (T=288, 53,704 tokens each,
  written in the sane_hf zoo format; the weights' values do not change the work). Checkpoints/s and peak RSS for
  N = 10 and 40 (the issue's "peak RSS stays bounded as the zoo grows"). `--rss-sizes` changes the N.
* `embed`: `SaneModel.embed` of one full ResNet-18 with config (a) of the pretraining issue (T=288, d_model 256,
  8 heads, 4+4 blocks, latent 128, window 256, halo 64: 420 haloed windows of 256 tokens), fp32, s/model, achieved
  GFLOP/s (the encoder's dense FLOPs + attention over every snippet token).
* `pretrain`: `pretrain` with config (a) (batch 32) on a converted zoo of 16 ResNet-18/100 checkpoints, two
  optimizer steps and two validation passes, with permutation augmentation: peak RSS (batches hold the windows and
  the layers a permuted view reads, never whole checkpoints) and s/step. The conversion runs in its own process.
* `sample`: one ResNet-18 from latents: vectorized KDE over 5 anchor latent sequences, haloed decode, de-normalize,
  detokenize and a strict load into a `ResNet18` module. s/model, broken down.

The SANE is randomly initialized: speed does not depend on its training. Usage:
`python benchmarks/bench_scale.py [--rss-sizes 10 40] [--repeats 2] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import CONFIGS  # noqa: E402  (one definition of config (a) for the training and ResNet-18 rows)


_MODEL_FIELDS = ("token_size", "d_model", "n_heads", "n_layers", "latent_dim", "window_size", "max_positions")
# The SANE of config (a) with the paper's ResNet-18 halo (docs/method.md#windows-and-halos: content 128 + 64 on each side).
CONFIG_A = {**{name: CONFIGS["a"][name] for name in _MODEL_FIELDS}, "halo_size": 64}
ORIGINAL = {  # the original, measured separately (2026-11, a machine with avx512_bf16)
    "pretrain": "5.9-6.1 s/step, peak RSS 4.1-4.2 GB (training step alone)",
    "embed": "7.65-8.06 s fp32 (3.92 s bf16)",
    "sample": "36.7 s (KDE alone ~30 s)",
    "convert": "-",
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, wall time / CPU time shows the contention."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resnet_layout(torch):
    from sane_hf.tokenization import TokenLayout
    from sane_hf.zoo_models import build_zoo_model

    torch.manual_seed(0)
    model = build_zoo_model("resnet18", num_classes=100)
    layout = TokenLayout.from_module(model, token_size=288, tokenize_bn_stats=True)
    return model, layout


def _sane(torch):
    from sane_hf.models.sane import SaneConfig, SaneModel

    torch.manual_seed(0)
    return SaneModel(SaneConfig(**CONFIG_A)).eval()


def haloed_pass_flops(config, num_tokens: int, stack: str) -> float:
    """Forward FLOPs of one haloed pass of a stack over a `num_tokens` sequence, as `SaneModel` executes it.

    Every snippet (`window_size` tokens; the whole sequence per window gives the same count) runs the input
    projection and all blocks but the last on every token; the last block computes keys and values for every token
    but queries, attention, output projection and MLP only for the `content_size` tokens the window keeps, and so
    does the output projection of the stack (`SaneModel._haloed_apply`'s content-only last block).
    """
    d, snippet, content = config.d_model, config.window_size, config.content_size
    windows = -(-num_tokens // content)
    blocks = config.n_layers if stack == "encoder" else config.n_decoder_layers
    width_in, width_out = (
        (config.token_size, config.latent_dim) if stack == "encoder" else (config.latent_dim, config.token_size)
    )
    full_block = 2 * 12 * d * d + 4 * snippet * d  # dense (qkv, out, 4x MLP) + QK^T and AV, per token
    per_snippet = snippet * (2 * width_in * d + (blocks - 1) * full_block + 2 * 2 * d * d)  # + last block's K, V
    per_snippet += content * (2 * 10 * d * d + 4 * snippet * d + 2 * d * width_out)  # last block's queries + output
    return windows * per_snippet


def run_convert(num_checkpoints: int) -> dict:
    from bench_data import folder_bytes, write_zoo

    from sane_hf.data import ConvertConfig, convert_zoo

    tmp = Path(tempfile.mkdtemp(prefix="sane_bench_scale_"))
    os.environ["HF_HOME"] = str(tmp / "hf_home")
    try:
        zoo = write_zoo(tmp / "zoo", "resnet18", {"num_classes": 100}, num_checkpoints, 1)
        baseline = peak_rss_gb()  # the writer's own peak (one ResNet-18 at a time)
        start, cpu = time.perf_counter(), cpu_seconds()
        result = convert_zoo(
            # The library default (1 thread): conversion is memory-bound copies, and 2 threads were slower here.
            # Not canonicalized: the numbers measure tokenization, as before canonicalization became the default.
            ConvertConfig(zoo_dir=str(zoo), output_dir=str(tmp / "ds"), token_size=288, canonicalize=False),
            show_progress=False,
        )
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        shards = sorted((tmp / "ds" / "data").glob("*.parquet"))
        return {
            "row": f"convert {num_checkpoints}",
            "checkpoints": result.info.num_checkpoints,
            "seconds": seconds,
            "s_per_checkpoint": seconds / num_checkpoints,
            "checkpoints_per_s": num_checkpoints / seconds,
            "cpu_s_per_checkpoint": cpu / num_checkpoints,
            "peak_rss_gb": peak_rss_gb(),
            "peak_rss_before_convert_gb": baseline,
            "zoo_MB": folder_bytes(zoo) / 1e6,
            "dataset_MB": folder_bytes(tmp / "ds") / 1e6,
            "shards": len(shards),
            "largest_shard_MB": max(f.stat().st_size for f in shards) / 1e6,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_pretrain(threads: int, num_checkpoints: int = 16) -> dict:
    from bench_data import write_zoo

    from sane_hf.training.checkpoints import read_trainer_state
    from sane_hf.training.configs import PretrainConfig
    from sane_hf.training.loop import pretrain

    tmp = Path(tempfile.mkdtemp(prefix="sane_bench_pretrain_"))
    os.environ["HF_HOME"] = str(tmp / "hf_home")
    try:
        zoo = write_zoo(tmp / "zoo", "resnet18", {"num_classes": 100}, num_checkpoints, 1)
        convert = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "convert_zoo.py")]
        convert += ["--zoo_dir", str(zoo), "--output_dir", str(tmp / "ds"), "--token_size", "288"]
        subprocess.run([*convert, "--split_fractions", "0.75", "0.125", "0.125"], check=True, capture_output=True)
        shutil.rmtree(zoo)
        model_fields = {k: v for k, v in CONFIG_A.items() if k != "token_size"}
        config = PretrainConfig(
            dataset=str(tmp / "ds"),
            output_dir=str(tmp / "sane"),
            **model_fields,
            batch_size=32,
            windows_per_checkpoint=4,  # 12 train checkpoints x 4 = 48 windows: one batch of 32 per epoch
            epochs=2,
            max_steps=2,
            lr=1e-4,
            seed=0,
            logging_steps=1,
            num_threads=threads,
        )
        start = time.perf_counter()
        pretrain(config)
        seconds = time.perf_counter() - start
        state = read_trainer_state(tmp / "sane")
        steps = state["optimizer_steps"]
        return {
            "row": "pretrain",
            "checkpoints": num_checkpoints,
            "steps": steps,
            "s_per_step_incl_validation": state["seconds"] / steps,
            "wall_s": seconds,
            "peak_rss_gb": peak_rss_gb(),
            "batch_size": config.batch_size,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_embed(repeats: int, batch_size: int | None, precision: str = "fp32") -> dict:
    import torch

    from sane_hf.utils.precision import precision_autocast

    model, layout = _resnet_layout(torch)
    tokens = layout.tokenize(model.state_dict())[0][None]
    positions = layout.positions
    sane = _sane(torch)
    with precision_autocast(precision, "cpu"):
        sane.embed(tokens[:, :2048], positions[:2048], batch_size=batch_size)  # warm-up
    times, cpu = [], cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        with precision_autocast(precision, "cpu"):
            sane.embed(tokens, positions, batch_size=batch_size)
        times.append(time.perf_counter() - start)
    cpu = (cpu_seconds() - cpu) / repeats
    seconds = statistics.median(times)
    config = sane.config
    windows = -(-layout.num_tokens // config.content_size)
    flops = haloed_pass_flops(config, layout.num_tokens, "encoder")
    return {
        "row": "embed",
        "precision": precision,
        "tokens": layout.num_tokens,
        "windows": windows,
        "s_per_model": seconds,
        "min_s": min(times),
        "cpu_s_per_model": cpu,
        "gflop": flops / 1e9,
        "gflops_per_s": flops / seconds / 1e9,
        "peak_rss_gb": peak_rss_gb(),
        "batch_size": batch_size or sane._snippets_per_pass(torch.device("cpu"), config.window_size),
    }


def run_sample(repeats: int, batch_size: int | None, num_anchors: int = 5, precision: str = "fp32") -> dict:
    import torch

    from sane_hf.generation.decode import build_model_from_state_dict, decode_latents, tokens_to_state_dict
    from sane_hf.generation.samplers import sample_kde
    from sane_hf.tokenization import TokenNormalization

    model, layout = _resnet_layout(torch)
    tokens = layout.tokenize(model.state_dict())[0][None]
    normalization = TokenNormalization.fit(tokens, layout)
    sane = _sane(torch)
    generator = torch.Generator().manual_seed(0)
    # Anchor latents as the haloed encoder would give them ([N_a, S, L]); their values do not change the work.
    anchors = torch.randn(num_anchors, layout.num_tokens, sane.config.latent_dim, generator=generator)
    decode_latents(sane, anchors[:1, :2048], layout.positions[:2048], batch_size, precision)  # warm-up
    parts: dict[str, list[float]] = {"kde": [], "decode": [], "detokenize": [], "load": [], "total": []}
    cpu = cpu_seconds()
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = sample_kde(anchors, 1, 0.2, generator=generator)
        t1 = time.perf_counter()
        decoded = decode_latents(sane, samples.latents, layout.positions, batch_size, precision)
        t2 = time.perf_counter()
        state_dict = tokens_to_state_dict(decoded, layout, normalization)
        t3 = time.perf_counter()
        build_model_from_state_dict(
            "resnet18", {"num_classes": 100}, {k: v[0] for k, v in state_dict.items()}, layout, init_seed=0
        )
        t4 = time.perf_counter()
        for name, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            parts[name].append(value)
    cpu = (cpu_seconds() - cpu) / repeats
    config = sane.config
    flops = haloed_pass_flops(config, layout.num_tokens, "decoder")
    decode_s = statistics.median(parts["decode"])
    return {
        "row": "sample",
        "precision": precision,
        "anchors": num_anchors,
        "s_per_model": statistics.median(parts["total"]),
        "cpu_s_per_model": cpu,
        **{f"{name}_s": statistics.median(values) for name, values in parts.items() if name != "total"},
        "decode_gflop": flops / 1e9,
        "decode_gflops_per_s": flops / decode_s / 1e9,
        "peak_rss_gb": peak_rss_gb(),
        "batch_size": batch_size or sane._snippets_per_pass(torch.device("cpu"), config.window_size),
    }


def _child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    kind = args.one[0]
    if kind == "convert":
        return run_convert(int(args.one[1]))
    if kind == "embed":
        return run_embed(args.repeats, args.batch_size, args.precision)
    if kind == "pretrain":
        return run_pretrain(args.threads)
    return run_sample(args.repeats, args.batch_size, precision=args.precision)


def run_all(
    rss_sizes: list[int], repeats: int, threads: int, batch_size: int | None, rows: list[str], precision: str = "fp32"
) -> list[dict]:
    """Run the requested rows, each in its own subprocess; returns their result dicts."""
    jobs = [["convert", str(n)] for n in rss_sizes] if "convert" in rows else []
    jobs += [[name] for name in ("pretrain", "embed", "sample") if name in rows]
    results = []
    for job in jobs:
        command = [sys.executable, __file__, "--one", *job, "--repeats", str(repeats), "--threads", str(threads)]
        command += ["--precision", precision]
        command += ["--batch-size", str(batch_size)] if batch_size else []
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["original"] = ORIGINAL[job[0]]
        row["threads"] = 1 if job[0] == "convert" else threads
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--rows", nargs="+", default=["convert", "pretrain", "embed", "sample"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="compute precision of the embed and sample rows"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="Haloed windows per forward pass (default: the model's)."
    )
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "scale.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_child(args)))
        return
    results = run_all(args.rss_sizes, args.repeats, args.threads, args.batch_size, args.rows, args.precision)
    for row in results:
        print(json.dumps(row))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "machine": platform.machine()}
    output.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
