"""Shared harness helpers (no official code): thread setup, contamination guard, timing, RSS."""

import json
import os
import resource
import statistics
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("BENCH_THREADS", "2"))
import torch  # noqa: E402 (after OMP_NUM_THREADS is set, which torch reads once at import)


torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))


def add_official_path():
    sys.path.insert(0, os.path.join(HERE, "official", "src"))
    sys.path.insert(0, os.path.join(HERE, "stubs"))


def _busy_jiffies():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


HZ = os.sysconf("SC_CLK_TCK")


class Probe:
    def __enter__(self):
        self.j0 = _busy_jiffies()
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.wall = time.perf_counter() - self.t0
        own = time.process_time() - self.c0
        self.foreign = (_busy_jiffies() - self.j0) / HZ - own
        self.clean = self.foreign <= 0.03 * 2 * self.wall + 0.03 or bool(os.environ.get("BENCH_NO_GUARD"))


def wait_idle(window=2.0, max_wait=30):
    if os.environ.get("BENCH_NO_GUARD"):
        return True
    t_end = time.time() + max_wait
    while time.time() < t_end:
        j0 = _busy_jiffies()
        c0 = time.process_time()
        time.sleep(window)
        foreign = (_busy_jiffies() - j0) / HZ - (time.process_time() - c0)
        if foreign <= 0.03 * 2 * window + 0.03:
            return True
    return False


def bench(fn, warmup, runs, max_extra=3, inner=1):
    for _ in range(warmup):
        fn()
    times, foreign, clean = [], [], []
    n_clean = 0
    total = 0
    while n_clean < runs and total < runs + max_extra:
        with Probe() as p:
            for _ in range(inner):
                fn()
        times.append(p.wall / inner)
        foreign.append(p.foreign)
        clean.append(p.clean)
        total += 1
        if p.clean:
            n_clean += 1
        else:
            wait_idle()
    ct = [t for t, c in zip(times, clean) if c] or times
    return {
        "min": min(ct),
        "median": statistics.median(ct),
        "mean": statistics.mean(ct),
        "max": max(ct),
        "n_clean": n_clean,
        "times": times,
        "foreign_s": foreign,
        "clean": clean,
    }


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name, result):
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", name + os.environ.get("BENCH_TAG", "") + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items()}, default=str))


def window_batch(tokens, mask, pos, B, W, gen):
    S = tokens.shape[0]
    starts = torch.randint(0, S - W + 1, (B,), generator=gen)
    idx = starts[:, None] + torch.arange(W)
    return tokens[idx], mask[idx], pos[idx]
