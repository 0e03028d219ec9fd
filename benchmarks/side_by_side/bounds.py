import sys

import torch
from common import bench, emit


tag = sys.argv[1]
res = {}
src = torch.randn(64 << 20)
dst = torch.empty_like(src)
r = bench(lambda: dst.copy_(src), 2, 7)
r["GB_per_s_rw"] = 2 * src.numel() * 4 / r["median"] / 1e9
res["copy_256MB"] = r
for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a = torch.randn(2048, 2048, dtype=dt)
    b = torch.randn(2048, 2048, dtype=dt)
    r = bench(lambda a=a, b=b: a @ b, 2, 7)
    r["GFLOP_s"] = 2 * 2048**3 / r["median"] / 1e9
    res[f"matmul_{name}_2048"] = r
res["capability"] = torch.backends.cpu.get_cpu_capability()
emit(f"bounds_{tag}", res)
