"""Zoo conversion and window-loading speed (sane_hf.data).

Workloads:
  * conversion of a generated zoo in sane_hf's own format: 40 `cnn_s` models (8x8 inputs, 2,464 parameters) x 5
    epochs (epochs 0-4), T=64 -> 66 tokens; and, unless `--skip-resnet`, 5 `resnet18` models x 2 epochs
    (T=288, 53,704 tokens, 62 MB of tokens per checkpoint) for the bandwidth of big checkpoints;
  * window batches (32 windows of 64 tokens) from the converted datasets: `WindowDataLoader` (zero-copy window
    reads from the memory-mapped Arrow cache), the same with `full_tokens=True`, a plain `torch` DataLoader over
    `ZooCheckpointDataset` + `WindowCollator`, and, as the naive reference, `split[rows]["tokens"]` through datasets'
    torch formatting followed by `sample_windows`.

Conversion reads the train checkpoints twice (normalization fit, then writing): checkpoints/s counts each
checkpoint once. Prints a table and writes `benchmarks/results/data.json`.

Usage: `python benchmarks/bench_data.py [--repeats 3] [--batches 50] [--threads 1] [--skip-resnet]`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sane_hf.data import (  # noqa: E402
    ConvertConfig,
    WindowCollator,
    WindowDataLoader,
    ZooCheckpointDataset,
    convert_zoo,
    load_zoo_dataset,
    sample_windows,
)
from sane_hf.zoo_models import build_zoo_model  # noqa: E402


def write_zoo(root: Path, architecture: str, model_kwargs: dict, num_models: int, num_epochs: int) -> Path:
    """A sane_hf-format zoo with random weights and made-up metrics (epochs 0..num_epochs-1)."""
    (root / "models").mkdir(parents=True)
    config = {"format": "sane_hf-zoo", "format_version": 1, "task": {"name": "synthetic"}}
    (root / "zoo_config.json").write_text(json.dumps(config))
    for index in range(num_models):
        folder = root / "models" / f"model_{index:04d}"
        (folder / "checkpoints").mkdir(parents=True)
        params = {
            "model_id": folder.name,
            "index": index,
            "architecture": architecture,
            "model_kwargs": model_kwargs,
            "seed": index,
            "lr": 1e-3,
            "optimizer": "adam",
            "epochs": num_epochs,
        }
        (folder / "params.json").write_text(json.dumps(params))
        torch.manual_seed(index)
        state_dict = build_zoo_model(architecture, **model_kwargs).state_dict()
        lines = []
        for epoch in range(num_epochs):
            noisy = {
                k: v + 0.01 * epoch * torch.randn_like(v) if v.is_floating_point() else v
                for k, v in state_dict.items()
            }
            save_file(noisy, folder / "checkpoints" / f"epoch_{epoch:04d}.safetensors")
            acc = 0.1 + 0.1 * epoch
            lines.append(json.dumps({"epoch": epoch, "train_acc": acc + 0.01, "test_acc": acc, "val_acc": acc}))
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        # The finished-model record sane-make-zoo writes (readers refuse an empty DONE).
        done = {"format": "sane_hf-zoo", "format_version": 1, "model_id": folder.name, "index": index}
        done |= {"epochs": num_epochs - 1, "num_checkpoints": num_epochs, "final_metrics": json.loads(lines[-1])}
        (folder / "DONE").write_text(json.dumps(done))
    return root


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bench_conversion(name: str, zoo: Path, output: Path, token_size: int, repeats: int, threads: int) -> dict:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = convert_zoo(
            ConvertConfig(
                zoo_dir=str(zoo),
                output_dir=str(output),
                token_size=token_size,
                overwrite=True,
                num_threads=threads,
                canonicalize=False,  # tokenization throughput, as before canonicalization became the default
            ),
            show_progress=False,
        )
        times.append(time.perf_counter() - start)
    info = result.info
    seconds = statistics.median(times)
    token_bytes = info.num_checkpoints * info.num_tokens * info.token_size * 4
    return {
        "workload": name,
        "operation": "convert zoo -> dataset",
        "checkpoints": info.num_checkpoints,
        "tokens_per_checkpoint": info.num_tokens,
        "token_size": info.token_size,
        "median_s": seconds,
        "min_s": min(times),
        "repeats": repeats,
        "threads": threads,
        "checkpoints_per_s": info.num_checkpoints / seconds,
        "token_MB_per_s": token_bytes / seconds / 1e6,
        "zoo_MB": folder_bytes(zoo) / 1e6,
        "dataset_MB": folder_bytes(output) / 1e6,
        "token_MB": token_bytes / 1e6,
    }


def time_batches(make_iter, num_batches: int, warmup: int = 3) -> list[float]:
    iterator = make_iter()
    for _ in range(warmup):
        next(iterator)
    times = []
    for _ in range(num_batches):
        start = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            iterator = make_iter()
            next(iterator)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_windows(
    name: str, dataset: Path, num_batches: int, full_batches: int, batch_size: int = 32, window: int = 64
) -> list[dict]:
    zoo = load_zoo_dataset(dataset)
    split = zoo.splits["train"]
    layout = zoo.layout
    W = min(window, layout.num_tokens)
    window_bytes = batch_size * W * layout.token_size * 4
    generator = torch.Generator().manual_seed(0)

    def loader_iter(**kwargs):
        def make():
            # Rows drawn with replacement: every batch has `batch_size` checkpoints even for tiny splits.
            loader = WindowDataLoader(split, layout, window, batch_size, seed=0, **kwargs)
            while True:
                yield loader.batch(torch.randint(0, len(split), (batch_size,), generator=generator))

        return make

    def torch_loader_iter():
        def make():
            dataset = ZooCheckpointDataset(split, property_columns=[])
            collate = WindowCollator(layout, window, generator)
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**9, generator=generator)
            yield from torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)

        return make

    def naive_iter():
        def make():
            while True:
                rows = torch.randint(0, len(split), (batch_size,), generator=generator).tolist()
                full = split[rows]["tokens"]
                yield sample_windows(full, window, generator, positions=layout.positions, mask=layout.mask)

        return make

    # What permutation augmentation reads instead of whole checkpoints: the layers each window overlaps.
    from sane_hf.data.zoo_permutations import build_permuter

    permuter = build_permuter(zoo)
    probe = WindowDataLoader(split, layout, window, batch_size, seed=1, permuter=permuter)
    range_bytes = statistics.mean(
        probe.batch(torch.arange(batch_size) % len(split))["full_tokens"].numel() for _ in range(5)
    )
    # Cases that read whole checkpoints get fewer batches (a ResNet-18 batch of 32 is 2 GB of tokens).
    cases = [
        ("WindowDataLoader (windows only)", loader_iter(), num_batches, False),
        ("WindowDataLoader (windows + permutation ranges)", loader_iter(permuter=permuter), num_batches, "ranges"),
        ("WindowDataLoader (full_tokens=True)", loader_iter(full_tokens=True), full_batches, True),
        ("torch DataLoader + ZooCheckpointDataset + WindowCollator", torch_loader_iter(), full_batches, True),
        ("naive: split[rows]['tokens'] + sample_windows", naive_iter(), full_batches, True),
    ]
    full_bytes = batch_size * layout.num_tokens * layout.token_size * 4
    rows = []
    for label, make, batches, reads_full in cases:
        times = time_batches(make, batches, warmup=1)
        ms = statistics.median(times)
        read_bytes = {True: full_bytes, False: window_bytes, "ranges": window_bytes + range_bytes * 4}[reads_full]
        rows.append(
            {
                "workload": name,
                "operation": label,
                "batch": f"{batch_size} x {W} tokens x T={layout.token_size}",
                "median_ms_per_batch": ms,
                "min_ms": min(times),
                "batches": batches,
                "window_MB_per_s": window_bytes / (ms / 1e3) / 1e6,
                # Token bytes copied out of the Arrow data per second (whole checkpoints where the case reads them).
                "read_MB_per_s": read_bytes / (ms / 1e3) / 1e6,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Conversions per workload (median reported).")
    parser.add_argument("--batches", type=int, default=50, help="Timed window batches per loader.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for conversion and loading.")
    parser.add_argument(
        "--skip-resnet", action="store_true", help="Skip the ResNet-18 workload (~1 GB of temp files)."
    )
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "data.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="sane_bench_data_"))
    os.environ["HF_HOME"] = str(tmp / "hf_home")
    results = []
    try:
        cnn = {"input_size": 8, "padding": "auto", "in_channels": 1}
        workloads = [("cnn_s 40 models x 5 epochs", "cnn_s", cnn, 40, 5, 64, args.repeats, args.batches)]
        if not args.skip_resnet:
            workloads.append(("resnet18 5 models x 2 epochs", "resnet18", {"num_classes": 100}, 5, 2, 288, 1, 3))
        for name, architecture, kwargs, models, epochs, token_size, repeats, full_batches in workloads:
            zoo = write_zoo(tmp / f"zoo_{architecture}", architecture, kwargs, models, epochs)
            dataset = tmp / f"ds_{architecture}"
            results.append(bench_conversion(name, zoo, dataset, token_size, repeats, args.threads))
            shutil.rmtree(zoo)
            results.extend(bench_windows(name, dataset, args.batches, full_batches))
            shutil.rmtree(dataset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'workload':30} {'operation':58} {'result':>52}")
    for row in results:
        if "checkpoints_per_s" in row:
            value = (
                f"{row['checkpoints_per_s']:8.1f} ckpt/s {row['token_MB_per_s']:7.1f} MB/s "
                f"({row['median_s']:.2f} s, {row['dataset_MB']:.1f} MB)"
            )
        else:
            value = (
                f"{row['median_ms_per_batch']:8.2f} ms/batch {row['window_MB_per_s']:7.1f} MB/s windows "
                f"{row['read_MB_per_s']:7.1f} MB/s read"
            )
        print(f"{row['workload']:30} {row['operation']:58} {value:>52}")
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine()}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nWrote {output}")


if __name__ == "__main__":
    main()
