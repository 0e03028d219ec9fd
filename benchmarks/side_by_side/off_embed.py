import contextlib
import sys

import torch
from common import bench, emit
from off_common import build_module, official_tokens
from SANE.sampling.halo import dehaloify, haloify


mode = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
module = build_module()
module.model.eval()
tokens, mask, pos = official_tokens()
w = tokens[None]
p = pos[None]
S = w.shape[1]


def embed():
    wh, ph = haloify(w, p, 128, 64)
    ws, ps = wh.shape, ph.shape
    wf = wh.view(-1, ws[-2], ws[-1])
    pf = ph.view(-1, ps[-2], ps[-1])
    outs = []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), torch.cuda.amp.autocast(enabled=True), ctx:
        for i in range(0, wf.shape[0], 32):
            outs.append(module.forward_encoder(wf[i : i + 32], pf[i : i + 32]))
    z = torch.cat(outs).float()
    z = z.view(ws[-4], ws[-3], ws[-2], z.shape[-1])
    pp = pf.view(*ps)
    z, _ = dehaloify(z, pp, 128, 64, S)
    return z


z = embed()
res = bench(embed, warmup, runs)
res.update(mode=mode, S=S, z_shape=list(z.shape), snippets=int(haloify(w, p, 128, 64)[0].shape[1]))
emit(f"off_embed_{mode}", res)
