import os
import sys

import torch
from common import bench, emit


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
from sane_hf import TokenLayout
from sane_hf.zoo_models import build_zoo_model


model = build_zoo_model("resnet18", num_classes=100)
sd = torch.load("resnet18_sd0.pt", weights_only=True)
model.load_state_dict(sd)
sd = model.state_dict()
layout = TokenLayout.from_module(model, token_size=288)
t, m, p = layout.tokenize(sd)
buf = torch.empty_like(t)
res = {"S": layout.num_tokens}
res["tokenize"] = bench(lambda: layout.tokenize(sd), 3, 15)
res["tokenize_out"] = bench(lambda: layout.tokenize(sd, out=buf), 3, 15)
res["detokenize"] = bench(lambda: layout.detokenize(t), 3, 15)
res["detokenize_copy"] = bench(lambda: layout.detokenize(t, copy=True), 3, 15)
emit("ours_tok", res)
