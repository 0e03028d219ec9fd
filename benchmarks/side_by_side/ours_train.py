import os
import sys

from common import bench, emit, peak_rss_mb


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
import bench_train as bt


precision = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
config = sys.argv[4] if len(sys.argv) > 4 else "a"
who = sys.argv[5] if len(sys.argv) > 5 else "ours"
# BENCH_RETAIN_FREED_MEMORY=0: without the training loop's default `retain_freed_memory` (the A/B of that lever)
# (a SANE_BASE checkout from before that option has no such argument)
retain = os.environ.get("BENCH_RETAIN_FREED_MEMORY", "1") != "0"
options = (
    {"retain_freed_memory": retain} if "retain_freed_memory" in bt.build_training_step.__code__.co_varnames else {}
)
model, step, tokens, flops = bt.build_training_step(config, bt.CONFIGS[config]["batch_size"], precision, **options)
rss_before = peak_rss_mb()
res = bench(step, warmup, runs)
res.update(
    precision=precision,
    retain_freed_memory=bool(options) and retain,
    params=model.num_parameters(),
    rss_before_steps_mb=rss_before,
    tokens_per_s=tokens / res["median"],
    gflops_per_s=flops / res["median"] / 1e9,
)
emit(f"{who}_train_{precision}" + ("" if config == "a" else f"_{config}"), res)
