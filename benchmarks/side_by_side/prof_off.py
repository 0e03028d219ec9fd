import contextlib
import sys

import torch
from common import window_batch
from off_common import build_module, official_tokens
from torch.profiler import ProfilerActivity, profile


prec = sys.argv[1] if len(sys.argv) > 1 else "bf16"
module = build_module()
module.model.train()
tokens, mask, pos = official_tokens()
gen = torch.Generator().manual_seed(0)


def batch():
    x, m, p = window_batch(tokens, mask, pos, 32, 256, gen)
    return (
        x * (1 + 0.1 * torch.randn(x.shape, generator=gen)),
        m,
        p.int(),
        x * (1 + 0.1 * torch.randn(x.shape, generator=gen)),
        m,
        p.int(),
    )


def step(b):
    x_i, m_i, p_i, x_j, m_j, p_j = b
    with torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext():
        module.optimizer.zero_grad(set_to_none=True)
        z_i, y_i, zp_i = module.forward(x_i, p_i)
        z_j, y_j, zp_j = module.forward(x_j, p_j)
        perf = module.criterion(
            z_i=zp_i, z_j=zp_j, y=torch.cat([y_i, y_j]), t=torch.cat([x_i, x_j]), m=torch.cat([m_i, m_j])
        )
    perf["loss/loss"].backward()
    module.optimizer.step()
    module.scheduler.step()


step(batch())
b = batch()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step(b)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))
