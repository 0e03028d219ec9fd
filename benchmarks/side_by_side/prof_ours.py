import os
import sys


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
import bench_train as bt
from torch.profiler import ProfilerActivity, profile


prec = sys.argv[1]
model, step, tokens, flops = bt.build_training_step("a", 32, prec)
step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))
