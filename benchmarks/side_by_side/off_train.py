import sys

import torch
from common import bench, emit, peak_rss_mb, window_batch
from off_common import build_module, official_tokens


mode = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
module = build_module()
module.model.train()
n_params = sum(p.numel() for p in module.parameters())
tokens, mask, pos = official_tokens()
gen = torch.Generator().manual_seed(0)
batches = []
for _ in range(warmup + runs + 3):
    x, m, p = window_batch(tokens, mask, pos, 32, 256, gen)
    xi = x * (1 + 0.1 * torch.randn(x.shape, generator=gen))
    xj = x * (1 + 0.1 * torch.randn(x.shape, generator=gen))
    batches.append((xi, m, p.int(), xj, m, p.int()))
rss_before = peak_rss_mb()
it = iter(batches)
losses = []
if mode == "fp32":  # official train_step (its cuda autocast / GradScaler disable themselves on CPU)

    def step():
        perf = module.train_step(*next(it))
        losses.append(float(perf["loss/loss"]))
else:  # bf16: same sequence, CPU bf16 autocast around forward + loss

    def step():
        x_i, m_i, p_i, x_j, m_j, p_j = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module.optimizer.zero_grad(set_to_none=True)
            z_i, y_i, zp_i = module.forward(x_i, p_i)
            z_j, y_j, zp_j = module.forward(x_j, p_j)
            perf = module.criterion(
                z_i=zp_i, z_j=zp_j, y=torch.cat([y_i, y_j]), t=torch.cat([x_i, x_j]), m=torch.cat([m_i, m_j])
            )
            loss = perf["loss/loss"]
        loss.backward()
        module.optimizer.step()
        module.scheduler.step()
        losses.append(float(loss))


res = bench(step, warmup, runs)
res.update(
    mode=mode,
    params=n_params,
    rss_before_steps_mb=rss_before,
    losses=losses,
    tokens_per_s=2 * 32 * 256 / res["median"],
)
emit(f"off_train_{mode}", res)
