"""Tokenize and detokenize one ResNet-18 with sane_hf. `python ours_tok.py retained`: in a process that called
`sane_hf.utils.allocation.retain_freed_memory()` first (as training runs do), so a fresh output reuses freed memory
instead of faulting in new pages."""

import os
import sys
import time

import torch
from common import bench, emit


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
from sane_hf import TokenLayout
from sane_hf.utils.allocation import retain_freed_memory
from sane_hf.zoo_models import build_zoo_model


retained = sys.argv[1:] == ["retained"] and retain_freed_memory()
model = build_zoo_model("resnet18", num_classes=100)
sd = torch.load("resnet18_sd0.pt", weights_only=True)
model.load_state_dict(sd)
sd = model.state_dict()
layout = TokenLayout.from_module(model, token_size=288)
start = time.perf_counter()
t, m, p = layout.tokenize(sd)
first_call = time.perf_counter() - start
buf = torch.empty_like(t)
res = {"S": layout.num_tokens, "first_call_s": first_call, "retained": retained}
res["tokenize"] = bench(lambda: layout.tokenize(sd), 3, 15)
res["tokenize_out"] = bench(lambda: layout.tokenize(sd, out=buf), 3, 15)
res["detokenize"] = bench(lambda: layout.detokenize(t), 3, 15)
res["detokenize_copy"] = bench(lambda: layout.detokenize(t, copy=True), 3, 15)
emit("ours_tok_retained" if retained else "ours_tok", res)
