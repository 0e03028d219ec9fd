"""Markdown rows of BENCHMARKS.md's issue-18 table from results/*_r<N>.json (run issue18.sh first)."""

import glob
import json
import statistics as st


def load(name, key=None):
    times, rss = [], []
    for path in sorted(glob.glob(f"results/{name}_r[0-9].json")):
        d = json.load(open(path))
        v = d[key] if key else d
        times += [t for t, c in zip(v["times"], v["clean"]) if c] or v["times"]
        rss.append(d["peak_rss_mb"] / 1024)
    return (st.median(times), max(rss), len(times)) if times else None


def fmt(r, scale, unit):
    return "-" if r is None else f"{r[0] * scale:.3g} {unit} (n={r[2]}, {r[1]:.2f} GB)"


rows = [
    ("tokenize one ResNet-18/100, T=288 (fresh output)", ("off_tok", "tokenize"), ("ours_tok", "tokenize"), 1e3, "ms"),
    (
        "the same in a process that called retain_freed_memory() (as training does)",
        ("off_tok", "tokenize"),
        ("ours_tok_retained", "tokenize"),
        1e3,
        "ms",
    ),
    ("detokenize one ResNet-18", ("off_tok", "detokenize"), ("ours_tok", "detokenize"), 1e3, "ms"),
    ("training step, config (a), fp32", ("off_train_fp32",), ("ours_train_fp32",), 1, "s"),
    ("training step, config (a), bf16 autocast", ("off_train_bf16",), ("ours_train_bf16",), 1, "s"),
    ("embed one ResNet-18 (halo 128+64), fp32", ("off_embed_fp32",), ("ours_embed_fp32",), 1, "s"),
    ("embed one ResNet-18, bf16", ("off_embed_bf16",), ("ours_embed_bf16",), 1, "s"),
    (
        "sample one ResNet-18 (KDE + haloed decode + detokenize), fp32",
        ("off_sample_fp32",),
        ("ours_sample_fp32",),
        1,
        "s",
    ),
    ("sample one ResNet-18, bf16", ("off_sample_bf16",), ("ours_sample_bf16",), 1, "s"),
    (
        "quickstart SANE step (config q), fp32: before -> after",
        ("base_train_fp32_q",),
        ("ours_train_fp32_q",),
        1e3,
        "ms",
    ),
    (
        "quickstart SANE step (config q), bf16: before -> after",
        ("base_train_bf16_q",),
        ("ours_train_bf16_q",),
        1e3,
        "ms",
    ),
]
print("| work | original (or before) median | sane_hf median | ratio |\n|---|---|---|---|")
for label, a, b, scale, unit in rows:
    ra, rb = load(*a), load(*b)
    ratio = f"{ra[0] / rb[0]:.2f}x" if ra and rb else "-"
    print(f"| {label} | {fmt(ra, scale, unit)} | {fmt(rb, scale, unit)} | {ratio} |")
for p in ("fp32", "bf16"):
    rows = [
        json.loads(open(f).read().strip().splitlines()[-1])
        for f in sorted(glob.glob(f"results/log_ours_sample_steps_{p}_r[0-9].txt"))
    ]
    if rows:
        total = st.median(r["s_per_model"] for r in rows)
        decode = st.median(r["decode_s"] for r in rows)
        print(
            f"| sane_hf's sampling step by step, {p} | - | {total:.3g} s with building the model (decode "
            f"{decode:.3g} s, {max(r['peak_rss_gb'] for r in rows):.2f} GB) | - |"
        )
bounds = sorted(glob.glob("results/bounds_*.json"))
for path in bounds:
    d = json.load(open(path))
    print(
        f"bounds {path}: copy {d['copy_256MB']['GB_per_s_rw']:.1f} GB/s, fp32 matmul {d['matmul_fp32_2048']['GFLOP_s']:.0f} "
        f"GFLOP/s, bf16 matmul {d['matmul_bf16_2048']['GFLOP_s']:.0f} GFLOP/s, capability {d['capability']}"
    )
for name in ("ours_tok", "ours_tok_retained"):
    for path in sorted(glob.glob(f"results/{name}_r[0-9].json")):
        d = json.load(open(path))
        print(f"{path}: first call in a fresh process {d['first_call_s'] * 1e3:.1f} ms")
