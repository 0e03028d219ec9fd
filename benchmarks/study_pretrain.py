"""Quality per CPU-second of the quickstart's SANE: which recipe buys the most for the main job's budget.

Every *arm* is the quickstart pipeline (`sane_hf.quickstart.stage_configs`) with some options changed: a zoo
(built once per distinct zoo option set and shared between arms), a SANE pretrained from scratch, then what a
user sees of it:

- the validation reconstruction R² against training wall seconds (`trainer_state.json`'s log, one point per epoch);
- the `test_acc` probe: the best SANE row and the best s(W) row, each chosen on validation, with test R² and a
  bootstrap interval over test *models* (`sane_hf.probing.bootstrap`);
- generated models (SANE_SUB) zero-shot against the anchor+noise control, the anchors and the encoded+decoded
  anchors (optionally after fine-tuning, `--finetune_epochs`).

    python benchmarks/study_pretrain.py --arms lr --seeds 0 --threads 1
    python benchmarks/study_pretrain.py --arms finalists --seeds 0 1 2 --threads 2

Results go to `benchmarks/results/study_pretrain.json` (one record per arm and seed, merged into what is already
there) and a plot of the R² curves to `benchmarks/results/study_pretrain.png`; `--table` prints the Markdown table
of docs/quality_study.md from that JSON. Runs are sequential in one process; pin the process (`taskset -c 0`) when
other work shares the machine, and say so next to the numbers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# The quickstart's SANE before this study (20 epochs of batch 64 at lr 3e-3, latent 32): round 1 changes one option of
# it at a time. Round 2 changes one option at a time of the recipe round 1 found, which is now the `default` preset.
PREVIOUS_DEFAULT: dict[str, dict[str, Any]] = {
    "pretrain": {"lr": 3e-3, "batch_size": 64, "latent_dim": 32, "epochs": 20, "max_grad_norm": None},
    "predict": {"poolings": ["mean", "mean+layers"], "finetune_epochs": 4, "finetune_pooling": "mean"},
    "generate": {"bandwidth": 0.01},
}
RECIPE_20_EPOCHS: dict[str, dict[str, Any]] = {"pretrain": {"epochs": 20, "max_grad_norm": None}}
# The first full-pipeline runs of the recipe kept the previous probe and generation settings.
FIRST_FINALISTS: dict[str, dict[str, Any]] = {
    "predict": PREVIOUS_DEFAULT["predict"],
    "generate": PREVIOUS_DEFAULT["generate"],
}


def _arms(base: dict[str, dict[str, Any]], changes: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict]:
    return {name: merge_options(base, change) for name, change in changes.items()}


def merge_options(base: dict[str, dict[str, Any]], change: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged = copy.deepcopy(base)
    for stage, options in change.items():
        merged.setdefault(stage, {}).update(options)
    return merged


# Each value maps a stage ("zoo", "convert", "pretrain", "predict", "generate") to the options it changes against
# the quickstart's `default` preset; an arm group is one study axis.
ARM_GROUPS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "round1": _arms(
        PREVIOUS_DEFAULT,
        {
            "previous default": {},
            "lr=1e-2": {"pretrain": {"lr": 1e-2}},
            "d_model=128": {"pretrain": {"d_model": 128}},
            "batch=32": {"pretrain": {"batch_size": 32}},
            "no-permutation": {"pretrain": {"permutation_augmentation": False}},
            "latent=64": {"pretrain": {"latent_dim": 64}},
            "lr=1e-2,batch=32": {"pretrain": {"lr": 1e-2, "batch_size": 32}},
            "lr=1e-2,batch=16": {"pretrain": {"lr": 1e-2, "batch_size": 16}},
            "lr=1e-2,batch=32,clip=1": {"pretrain": {"lr": 1e-2, "batch_size": 32, "max_grad_norm": 1.0}},
            "lr=1e-2,batch=32,latent=64": {"pretrain": {"lr": 1e-2, "batch_size": 32, "latent_dim": 64}},
        },
    ),
    "round2": _arms(
        RECIPE_20_EPOCHS,
        {
            "R": {},
            "R,lr=2e-2": {"pretrain": {"lr": 2e-2}},
            "R,lr=5e-3": {"pretrain": {"lr": 5e-3}},
            "R,no-permutation": {"pretrain": {"permutation_augmentation": False}},
            "R,gamma=0": {"pretrain": {"gamma": 0.0}},
            "R,projection=mean": {"pretrain": {"projection_pooling": "mean"}},
            "R,d_model=32": {"pretrain": {"d_model": 32}},
            "R,layers=1": {"pretrain": {"n_layers": 1}},
            "R,token=32,latent=32": {"convert": {"token_size": 32}, "pretrain": {"latent_dim": 32}},
            "R,zoo=240,epochs=10": {"zoo": {"num_models": 240}, "pretrain": {"epochs": 10}},
        },
    ),
    "finalists": _arms(
        FIRST_FINALISTS,
        {
            "R,clip=1,epochs=40": {},
            "R,lr=5e-3,epochs=40": {"pretrain": {"lr": 5e-3}},
            "R,clip,40ep,denoise": {"pretrain": {"denoise": True}},
            "R,clip,40ep,denoise,add=0.2": {"pretrain": {"denoise": True, "noise_additive": 0.2}},
        },
    ),
    "length": {f"epochs={n}": {"pretrain": {"epochs": n}} for n in (20, 30, 40, 60)},
}


def machine_facts() -> dict[str, Any]:
    """CPU model and the flags that decide fp32/bf16 speed, as benchmarks/run_all.py reports them."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "flags": [flag for flag in wanted if flag in flags],
        "cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
    }


def _key(options: Any) -> str:
    return hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_arm(
    name: str,
    change: dict[str, dict[str, Any]],
    seed: int,
    threads: int,
    work_dir: Path,
    finetune_epochs: int,
    base_preset: str = "default",
    pretrain_only: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    """One arm on one seed: shared zoo + dataset, fresh SANE, probe and generation. Returns its record."""
    from sane_hf.data.convert import convert_zoo
    from sane_hf.data.hub_dataset import load_zoo_dataset
    from sane_hf.data.zoo_builder import build_zoo
    from sane_hf.generation import generate_models
    from sane_hf.models.sane import SaneModel
    from sane_hf.probing.predict import predict_properties
    from sane_hf.quickstart import PRESETS, QuickstartConfig, stage_configs, summarize_generation, summarize_probe
    from sane_hf.training.checkpoints import read_trainer_state
    from sane_hf.training.loop import pretrain

    preset = merge_options(PRESETS[base_preset], change)
    preset["generate"]["finetune_epochs"] = finetune_epochs
    arm_dir = work_dir / f"{_key([name, preset, seed])}"
    configs = stage_configs(QuickstartConfig(output_dir=str(arm_dir), seed=seed, num_threads=threads), preset=preset)
    # The zoo and its dataset depend only on their own options and the seed: share them between arms.
    zoo_dir = work_dir / f"zoo-{_key([preset['zoo'], seed])}"
    data_dir = work_dir / f"data-{_key([preset['zoo'], preset['convert'], seed])}"
    configs["zoo"] = dataclasses.replace(configs["zoo"], output_dir=str(zoo_dir))
    configs["convert"] = dataclasses.replace(configs["convert"], zoo_dir=str(zoo_dir), output_dir=str(data_dir))
    for stage in ("pretrain", "predict", "generate"):
        configs[stage] = dataclasses.replace(configs[stage], dataset=str(data_dir))
    torch.set_num_threads(threads)
    record: dict[str, Any] = {"arm": name, "seed": seed, "threads": threads, "options": change, "seconds": {}}

    start = time.perf_counter()
    build_zoo(configs["zoo"])
    record["seconds"]["zoo"] = round(time.perf_counter() - start, 1)
    if not (data_dir / "meta" / "info.json").is_file():
        start = time.perf_counter()
        convert_zoo(configs["convert"])
        record["seconds"]["convert"] = round(time.perf_counter() - start, 1)

    shutil.rmtree(arm_dir, ignore_errors=True)  # a fresh SANE: never resume another arm's checkpoints
    start = time.perf_counter()
    folder = pretrain(configs["pretrain"])
    record["seconds"]["pretrain"] = round(time.perf_counter() - start, 1)
    state = read_trainer_state(folder)
    record["optimizer_steps"] = state["optimizer_steps"]
    record["curve"] = [
        {"step": h["step"], "seconds": h.get("seconds"), "val_r2": h["val/r2"]}
        for h in state["log_history"]
        if "val/r2" in h
    ]
    record["val_r2"] = record["curve"][-1]["val_r2"] if record["curve"] else None
    if pretrain_only:  # screening: reconstruction only
        shutil.rmtree(arm_dir, ignore_errors=True)
        return record

    start = time.perf_counter()
    results = predict_properties(configs["predict"])
    record["seconds"]["predict"] = round(time.perf_counter() - start, 1)
    record["probe"] = summarize_probe(results, "test_acc")

    start = time.perf_counter()
    sane = SaneModel.from_pretrained(str(folder)).eval()
    zoo = load_zoo_dataset(str(data_dir))
    generation = generate_models(sane, zoo, configs["generate"])
    record["seconds"]["generate"] = round(time.perf_counter() - start, 1)
    record["generation"] = summarize_generation(generation.report.to_dict() if generation.report else {})
    record["folders"] = {"sane": str(folder), "dataset": str(data_dir)}
    if not keep:
        shutil.rmtree(arm_dir, ignore_errors=True)
    return record


def study_generation(
    sane_dir: str, data_dir: str, grid: dict[str, dict[str, Any]], seed: int, threads: int
) -> list[dict[str, Any]]:
    """Generation options on one pretrained SANE (zero-shot only): `{name: {GenerateConfig field: value}}`."""
    from sane_hf.data.hub_dataset import load_zoo_dataset
    from sane_hf.generation import generate_models
    from sane_hf.models.sane import SaneModel
    from sane_hf.quickstart import QuickstartConfig, stage_configs, summarize_generation

    torch.set_num_threads(threads)
    sane = SaneModel.from_pretrained(sane_dir).eval()
    zoo = load_zoo_dataset(data_dir)
    base = stage_configs(QuickstartConfig(seed=seed, num_threads=threads))["generate"]
    records = []
    for name, options in grid.items():
        config = dataclasses.replace(base, model=sane_dir, dataset=data_dir, finetune_epochs=0, **options)
        start = time.perf_counter()
        result = generate_models(sane, zoo, config)
        records.append(
            {
                "name": name,
                "options": options,
                "seconds": round(time.perf_counter() - start, 1),
                "generation": summarize_generation(result.report.to_dict()),
                "distance": sum(result.distances) / len(result.distances),
            }
        )
        g = records[-1]["generation"]
        print(
            name,
            {k: (round(v["mean"], 3), round(v.get("std", 0), 3)) for k, v in g.items()},
            "distance",
            round(records[-1]["distance"], 3),
            flush=True,
        )
    return records


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    axis.set_prop_cycle(color=[plt.cm.tab20(i % 20) for i in range(len(records))])
    for record in records:
        curve = record.get("curve") or []
        if curve and curve[0].get("seconds") is not None:
            diverged = min(p["val_r2"] for p in curve) < -0.5
            axis.plot(
                [p["seconds"] for p in curve],
                [max(p["val_r2"], -0.1) for p in curve],  # diverged runs drop to -1e3: clip, say so in the label
                label=f"{record['arm']} (seed {record['seed']}, {record['threads']} thr)"
                + (" diverged" if diverged else ""),
                linewidth=1,
                linestyle=":" if diverged else "-",
            )
    axis.set_ylim(-0.1, 1.0)
    axis.set_xlabel("pretraining wall seconds")
    axis.set_ylabel("validation reconstruction R²")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)


def _interval(entry: dict[str, Any] | None, key: str = "test") -> str:
    if not entry:
        return "-"
    low, high = entry.get(f"{key}_interval", (None, None))
    value = entry.get(key)
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | seed | thr | steps | pretrain s | val R² | SANE test_acc R² (row) | s(W) R² | generated | "
        "noise control | anchors | enc+dec anchors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        probe = r.get("probe", {})
        gen = r.get("generation", {})

        def acc(population: str, gen=gen) -> str:
            entry = gen.get(population)
            return f"{entry['mean']:.3f} ± {entry['std']:.3f}" if entry else "-"

        sane = probe.get("sane") or {}
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['threads']} | {r.get('optimizer_steps')} | "
            f"{r['seconds'].get('pretrain')} | {r['val_r2']:.3f} | {_interval(sane)} ({sane.get('method', '-')}) | "
            f"{_interval(probe.get('s(W)'))} | {acc('generated')} | {acc('noise_control')} | {acc('anchors')} | "
            f"{acc('anchors_reconstructed')} |"
        )
    return "\n".join(lines)


def generation_table(studies: list[dict[str, Any]], records: list[dict[str, Any]] = ()) -> str:
    """Markdown rows of the generation studies: zero-shot test accuracy (mean ± std over models) per population."""
    lines = [
        "| SANE | options | distance | generated | noise control | margin / control std | control, best of "
        "candidates | anchors | enc+dec anchors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    arm_of = {r["folders"]["sane"]: r["arm"] for r in records if "folders" in r}
    for study in studies:
        label = study.get("label") or arm_of.get(study["sane"], Path(study["sane"]).parent.name)
        for r in study["records"]:
            g = r["generation"]

            def acc(name: str, g=g) -> str:
                return f"{g[name]['mean']:.3f} ± {g[name]['std']:.3f}" if name in g else "-"

            control = g.get("noise_control", {})
            margin = g["generated"]["mean"] - control.get("mean", float("nan"))
            ratio = margin / control["std"] if control.get("std") else float("nan")
            lines.append(
                f"| {label} | {json.dumps(r['options'])} | {r['distance']:.2f} | "
                f"{acc('generated')} | {acc('noise_control')} | {margin:+.3f} / {ratio:.1f} | "
                f"{acc('noise_control_selected')} | {acc('anchors')} | {acc('anchors_reconstructed')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["baseline"], help=f"Arm groups or arm names: {list(ARM_GROUPS)}")
    parser.add_argument("--arms_json", default=None, help="Extra arms as JSON {name: {stage: {option: value}}}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--finetune_epochs", type=int, default=0, help="Fine-tuning epochs of the generation step.")
    parser.add_argument(
        "--pretrain_only", action="store_true", help="Screen on reconstruction only (no probe/generation)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep each arm's SANE folder (to study generation on it).")
    parser.add_argument("--work_dir", default="outputs/study_pretrain")
    parser.add_argument("--output", default=str(RESULTS / "study_pretrain.json"))
    parser.add_argument("--table", action="store_true", help="Print the table of --output and exit.")
    parser.add_argument(
        "--generation_grid",
        default=None,
        help="JSON {name: {generate option: value}}: study generation on --sane/--dataset instead of pretraining.",
    )
    parser.add_argument("--sane", default=None, help="A pretrained SANE folder (with --generation_grid).")
    parser.add_argument("--dataset", default=None, help="Its tokenized zoo folder (with --generation_grid).")
    args = parser.parse_args(argv)
    output = Path(args.output)
    existing = json.loads(output.read_text()) if output.is_file() else {"machine": machine_facts(), "records": []}
    if args.table:
        plot(existing["records"], output.with_suffix(".png"))
        print(table(existing["records"]))
        print()
        print(generation_table(existing.get("generation_studies", []), existing["records"]))
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.generation_grid:
        records = study_generation(
            args.sane, args.dataset, json.loads(args.generation_grid), args.seeds[0], args.threads
        )
        existing.setdefault("generation_studies", []).append({"sane": args.sane, "records": records})
        tmp = output.with_suffix(".tmp")
        tmp.write_text(json.dumps(existing, indent=1))
        os.replace(tmp, output)
        return
    arms: dict[str, dict] = {}
    extra = json.loads(args.arms_json) if args.arms_json else {}
    for token in args.arms:
        if token in ARM_GROUPS:
            arms.update(ARM_GROUPS[token])
        elif token in extra:
            arms[token] = extra[token]
        else:
            found = [group[token] for group in ARM_GROUPS.values() if token in group]
            if not found:
                sys.exit(
                    f"Unknown arm or group {token!r}; groups: {list(ARM_GROUPS)}; --arms_json names: {list(extra)}"
                )
            arms[token] = found[0]
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name, change in arms.items():
        for seed in args.seeds:
            start = time.perf_counter()
            record = run_arm(
                name,
                change,
                seed,
                args.threads,
                work_dir,
                args.finetune_epochs,
                pretrain_only=args.pretrain_only,
                keep=args.keep,
            )
            record["wall_seconds"] = round(time.perf_counter() - start, 1)
            record["machine"] = machine_facts()
            existing["records"] = [
                r
                for r in existing["records"]
                if not (r["arm"] == name and r["seed"] == seed and r["threads"] == args.threads)
            ] + [record]
            tmp = output.with_suffix(".tmp")
            tmp.write_text(json.dumps(existing, indent=1))
            os.replace(tmp, output)
            print(table([record]).splitlines()[-1], flush=True)
    plot(existing["records"], output.with_suffix(".png"))
    print(table(existing["records"]))


if __name__ == "__main__":
    main()
