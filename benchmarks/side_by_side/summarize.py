import glob
import json
import os
import sys


tags = sys.argv[1:] or ["_r1"]


def f(x, s=1):
    return f"{x * s:.3g}"


for path in sorted(glob.glob("results/*.json")):
    name = os.path.basename(path)[:-5]
    if not any(name.endswith(t) for t in tags):
        continue
    d = json.load(open(path))
    for key, v in [("", d)] if "min" in d else [(k, v) for k, v in d.items() if isinstance(v, dict) and "min" in v]:
        extra = {
            k: round(v2, 3) if isinstance(v2, float) else v2
            for k, v2 in (v.items() if key else d.items())
            if k in ("tokens_per_s", "GB_per_s_rw", "GFLOP_s", "gflops_per_s", "batch_size")
        }
        print(
            f"{name:24s} {key:18s} min {v['min'] * 1e3:9.2f} med {v['median'] * 1e3:9.2f} mean {v['mean'] * 1e3:9.2f} max {v['max'] * 1e3:9.2f} ms"
            f" clean {v['n_clean']}/{len(v['times'])} fmax {max(v['foreign_s']):.2f}s rss {d['peak_rss_mb']:.0f}MB {extra}"
        )
