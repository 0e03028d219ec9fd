"""The original's sampling of one ResNet-18: per-token KDE over 5 anchor latent sequences (its `mode="token"`),
haloed decode (128 content + 64 halo), de-haloing and `tokens_to_checkpoint` (its `sample_models`), config (a)."""

import contextlib
import sys

import torch
from common import bench, emit
from off_common import build_module, official_tokens
from SANE.sampling.sample_models import sample_models


mode = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
batch_size = int(sys.argv[4]) if len(sys.argv) > 4 else 32  # snippets per decoder pass, as in off_embed.py
module = build_module()
module.model.eval()
tokens, mask, pos = official_tokens()
reference = torch.load("resnet18_sd1.pt", weights_only=True)
generator = torch.Generator().manual_seed(0)
# Anchor latents as the haloed encoder would give them ([N_a, S, L]); their values do not change the work.
anchors = torch.randn(5, tokens.shape[0], 128, generator=generator)


def sample():
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    with ctx:
        return sample_models(
            module, reference, repetitions=1, anchor_z=anchors, anchor_pos=pos, anchor_w_shape=tokens[None].shape,
            mode="token", batch_size=batch_size, return_new_anchor=False, halo=True, halo_wse=128, halo_hs=64,
        )  # fmt: skip


out = sample()
checkpoint = out[0] if isinstance(out, list) else out[0][0]
res = bench(sample, warmup, runs)
res.update(mode=mode, S=int(tokens.shape[0]), batch_size=batch_size, keys=len(checkpoint))
emit(f"off_sample_{mode}", res)
