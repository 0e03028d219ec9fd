import json
import statistics as st


def load(name, key=None):
    ts = []
    rss = []
    for tag in ("_r1", "_r2"):
        d = json.load(open(f"results/{name}{tag}.json"))
        v = d[key] if key else d
        ts += [t for t, c in zip(v["times"], v["clean"]) if c]
        rss.append(d["peak_rss_mb"])
    return ts, rss


rows = [
    ("tokenize ResNet-18 (per call)", "tok", "tokenize", 1e3, "ms"),
    (
        "tokenize, GC off (official) / out= buffer (ours)",
        ("off_tok", "tokenize_gc_off"),
        ("ours_tok", "tokenize_out"),
        1e3,
        "ms",
    ),
    ("detokenize ResNet-18", "tok", "detokenize", 1e3, "ms"),
    ("detokenize, ours copy=True", None, ("ours_tok", "detokenize_copy"), 1e3, "ms"),
    ("train step A fp32", "train_fp32", None, 1, "s"),
    ("train step A bf16", "train_bf16", None, 1, "s"),
    ("embed ResNet-18 fp32", "embed_fp32", None, 1, "s"),
    ("embed ResNet-18 bf16", "embed_bf16", None, 1, "s"),
]
for label, a, b, scale, unit in rows:
    out = [label]
    meds = []
    if isinstance(a, tuple) or a is None:
        specs = [a, b]
    else:
        specs = [("off_" + a, b), ("ours_" + a, b)]
    for spec in specs:
        if spec is None:
            out.append("-")
            meds.append(None)
            continue
        ts, rss = load(*spec)
        meds.append(st.median(ts))
        out.append(
            f"{min(ts) * scale:.3g} / {st.median(ts) * scale:.3g} / {max(ts) * scale:.3g} {unit} (mean {st.mean(ts) * scale:.3g}, n={len(ts)}, RSS {'/'.join(f'{r / 1024:.2f}' for r in rss)} GB)"
        )
    if all(meds):
        out.append(f"off/ours = {meds[0] / meds[1]:.2f}x")
    if "train" in label:
        out.append(f"tok/s off {16384 / meds[0]:.0f} ours {16384 / meds[1]:.0f}")
    print(" | ".join(out))
