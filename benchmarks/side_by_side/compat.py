import torch

from sane_hf import TokenLayout
from sane_hf.zoo_models import build_zoo_model


model = build_zoo_model("resnet18", num_classes=100)
sd = torch.load("resnet18_sd0.pt", weights_only=True)
model.load_state_dict(sd)
sd = model.state_dict()
layout = TokenLayout.from_module(model, token_size=288)
t, m, p = layout.tokenize(sd)
o = torch.load("results/official_tokens.pt", weights_only=True)
ot, om, op = o["tokens"], o["mask"], o["pos"]
print("ours  ", t.shape, t.dtype, m.shape, m.dtype, p.shape, p.dtype)
print("offic ", ot.shape, ot.dtype, om.shape, om.dtype, op.shape, op.dtype)
if t.shape == ot.shape:
    print("tokens equal:", torch.equal(t, ot), "bitwise:", torch.equal(t.view(torch.int32), ot.view(torch.int32)))
    print("mask equal:", torch.equal(m, om))
    print("pos equal (values):", torch.equal(p.long(), op.long()), "dtypes", p.dtype, op.dtype)
    for c in range(3):
        d = (p[:, c].long() != op[:, c].long()).nonzero()
        print(" pos col", c, "mismatches", d.numel(), d[:5].flatten().tolist())
    d = (t != ot).any(1).nonzero().flatten()
    print("token rows differing:", d.numel(), d[:10].tolist())
else:
    print("shape mismatch")
print("layers", layout.num_layers, "max pos ours", p.max(0).values.tolist(), "official", op.max(0).values.tolist())
# padding check: masked-out entries zero in both
print("ours pad zero:", bool((t[~m] == 0).all()), "official pad zero:", bool((ot[~om] == 0).all()))
# layer order
print("first layers:", [(layer.weight_key, getattr(layer, "bias_key", None)) for layer in layout.layers[:4]])
print(
    "layer 1..3 row counts ours/official:",
    [int((p[:, 1] == i).sum()) for i in range(4)],
    [int((op[:, 1] == i).sum()) for i in range(4)],
)
