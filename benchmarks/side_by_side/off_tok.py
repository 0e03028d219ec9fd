import gc

import torch
from common import add_official_path, bench, emit


add_official_path()
from SANE.datasets.dataset_auxiliaries import tokenize_checkpoint, tokens_to_checkpoint  # noqa: E402 (after add_official_path)


sd = torch.load("resnet18_sd0.pt", weights_only=True)
ref = torch.load("resnet18_sd1.pt", weights_only=True)


def tok():
    return tokenize_checkpoint(sd, 288, return_mask=True, ignore_bn=False)


t, m, p = tok()
torch.save({"tokens": t, "mask": m, "pos": p}, "results/official_tokens.pt")
res = {"S": t.shape[0], "pos_dtype": str(p.dtype)}
res["tokenize"] = bench(tok, 2, 15)
res["detokenize"] = bench(lambda: tokens_to_checkpoint(t, p, ref, ignore_bn=False), 2, 15)
gc.disable()
res["tokenize_gc_off"] = bench(tok, 2, 15)
gc.enable()
back = tokens_to_checkpoint(t, p, ref, ignore_bn=False)
res["roundtrip_exact"] = all(torch.equal(back[k], sd[k]) for k in sd if "num_batches" not in k)
emit("off_tok", res)
