"""Work over processes (issue 18, item 5): 1 process vs 2 CPU processes (torchrun) for conversion, embedding and
generation (docs/architecture.md#work-over-processes).

    python benchmarks/bench_processes.py --quickstart runs/quickstart [--repeats 2] [--output results/processes.json]

* conversion: a zoo of `--resnets` random-init ResNet-18/100 checkpoints (`bench_data.write_zoo`; T=288, one
  62 MB shard per checkpoint, not canonicalized), `scripts/convert_zoo.py`;
* embedding: the train split of that converted zoo with a config (a) SANE (`bench_scale`; random weights, the work
  does not depend on them), `embed_zoo_across_processes`, one checkpoint per batch;
* generation: `scripts/generate.py` on the quickstart's SANE and tokenized zoo (`--quickstart`, the output folder of
  `scripts/quickstart.py`; `--preset smoke` builds one in seconds): subsampling 64 candidates down to 4 and the
  evaluation with 2 fine-tuning epochs.

Every case runs as its own command, one thread per process (two processes use two cores), `--repeats` times,
alternating 1 and 2 processes; the table gives the median wall time of the whole command (start-up, loading and
writing included) and, for embedding, of the embedding alone (after loading, until every process holds every row).
Also printed: the CPU's vector flags and the machine's bounds in the same run (`run_all.machine_bounds`, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).parent
REPO = HERE.parent


def embed_worker(dataset: str, model: str) -> None:
    """Run under 1 or 2 processes: embed the train split of `dataset`, print the seconds (main process)."""
    import torch

    from sane_hf.data.hub_dataset import load_zoo_dataset
    from sane_hf.models.sane import SaneModel
    from sane_hf.probing.embed import embed_zoo_across_processes
    from sane_hf.utils.processes import Processes

    torch.set_num_threads(1)
    zoo = load_zoo_dataset(dataset)
    sane = SaneModel.from_pretrained(model).eval()
    processes = Processes.current()
    processes.barrier()
    start = time.perf_counter()
    embed_zoo_across_processes(sane, zoo.splits["train"], zoo.layout, batch_size=1)
    seconds = time.perf_counter() - start
    if processes.is_main:
        print(json.dumps({"embed_seconds": seconds, "rows": zoo.splits["train"].num_rows}))
    if processes.count > 1:
        sys.stdout.flush()
        os._exit(0)  # as the scripts do under a launch (gloo can abort at interpreter exit)


def _command(num_processes: int, *args: str) -> list[str]:
    if num_processes == 1:
        return [sys.executable, *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(num_processes),
        *args,
    ]


def _run(command: list[str], cwd: Path) -> tuple[float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
    }
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", help="Output folder of scripts/quickstart.py (zoo/, zoo_ds/, sane/).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "processes.json"))
    parser.add_argument("--resnets", type=int, default=6, help="ResNet-18 checkpoints of the conversion case.")
    parser.add_argument("--embed_worker", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed_worker:
        embed_worker(*args.embed_worker)
        return
    if not args.quickstart:
        parser.error("--quickstart is required: the output folder of scripts/quickstart.py.")
    sys.path.insert(0, str(HERE))
    import torch
    from bench_data import write_zoo
    from bench_scale import _sane
    from run_all import machine_bounds

    from sane_hf.utils.precision import cpu_flags

    root = Path(args.quickstart).resolve()
    flags = cpu_flags()
    machine = {
        "flags": {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")},
        "bounds_1_thread": machine_bounds(1),
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    print(json.dumps(machine, indent=1), flush=True)
    scratch_dir = tempfile.TemporaryDirectory(prefix="bench_processes_")
    scratch = Path(scratch_dir.name)
    write_zoo(scratch / "zoo", "resnet18", {"num_classes": 100}, args.resnets, 1)
    _sane(torch).save_pretrained(scratch / "sane")
    generate_config = scratch / "generate.yaml"
    generate_config.write_text(
        f"model: {root / 'sane'}\ndataset: {root / 'zoo_ds'}\nsampler: subsample\nn: 4\nnum_candidates: 64\n"
        "num_anchors: 8\nevaluate: true\nfinetune_epochs: 2\nnum_threads: 1\noverwrite: true\n"
    )
    cases = {
        f"convert {args.resnets} ResNet-18 checkpoints": lambda k, work: _command(
            k,
            str(REPO / "scripts" / "convert_zoo.py"),
            "--zoo_dir",
            str(scratch / "zoo"),
            "--output_dir",
            str(work / "zoo_ds"),
            "--token_size",
            "288",
            "--canonicalize",
            "false",
            "--overwrite",
            "true",
        ),  # fmt: skip
        "embed their train split (SANE config (a))": lambda k, work: _command(
            k, str(HERE / "bench_processes.py"), "--embed_worker", str(scratch / "1" / "zoo_ds"), str(scratch / "sane")
        ),
        "generate (subsample 64 -> 4, fine-tune 2 epochs)": lambda k, work: _command(
            k,
            str(REPO / "scripts" / "generate.py"),
            "--config",
            str(generate_config),
            "--output_dir",
            str(work / "gen"),
        ),
    }
    rows = []
    for name, command in cases.items():
        times: dict[int, list[float]] = {1: [], 2: []}
        inner: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for k in (1, 2):
                work = scratch / f"{k}"
                work.mkdir(exist_ok=True)
                seconds, stdout = _run(command(k, work), work)
                times[k].append(seconds)
                if "embed_seconds" in stdout:
                    inner[k].append(json.loads(stdout.strip().splitlines()[-1])["embed_seconds"])
        row = {"work": name, **{f"command_{k}p_s": statistics.median(times[k]) for k in (1, 2)}}
        if inner[1]:
            row.update({f"embed_{k}p_s": statistics.median(inner[k]) for k in (1, 2)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    scratch_dir.cleanup()
    machine["load_average_after"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    print("| work | 1 process | 2 processes | ratio |\n|---|---|---|---|")
    for row in rows:
        for prefix, label in (("command", "whole command"), ("embed", "embedding alone")):
            if f"{prefix}_1p_s" in row:
                one, two = row[f"{prefix}_1p_s"], row[f"{prefix}_2p_s"]
                print(f"| {row['work']}, {label} | {one:.2f} s | {two:.2f} s | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
