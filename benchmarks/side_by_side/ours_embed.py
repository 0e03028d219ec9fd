import contextlib
import os
import sys

import torch
from common import bench, emit


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
import bench_scale as bs

from sane_hf.tokenization import TokenLayout
from sane_hf.zoo_models import build_zoo_model


precision = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
bsz = int(sys.argv[4]) if len(sys.argv) > 4 else None
model = build_zoo_model("resnet18", num_classes=100)
model.load_state_dict(torch.load("resnet18_sd0.pt", weights_only=True))
layout = TokenLayout.from_module(model, token_size=288)
tokens = layout.tokenize(model.state_dict())[0][None]
positions = layout.positions
sane = bs._sane(torch)
ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext


def embed():
    with ctx():
        return sane.embed(tokens, positions, batch_size=bsz)


e = embed()
res = bench(embed, warmup, runs)
res.update(
    precision=precision,
    S=layout.num_tokens,
    emb_dtype=str(e.dtype),
    batch_size=bsz or sane._snippets_per_pass(torch.device("cpu"), sane.config.window_size),
    gflops_per_s=bs.haloed_pass_flops(sane.config, layout.num_tokens, "encoder") / res["median"] / 1e9,
)
emit(f"ours_embed_{precision}" + (f"_b{bsz}" if bsz else ""), res)
