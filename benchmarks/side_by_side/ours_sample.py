"""sane_hf's sampling of one ResNet-18, the same work as off_sample.py: KDE over 5 anchor latent sequences, haloed
decode, detokenize into a state_dict (`bench_scale.run_sample`'s steps, without building the model)."""

import os
import sys

import torch
from common import bench, emit


sys.path.insert(0, os.environ["SANE_CHECKOUT"] + "/benchmarks")
import bench_scale as bs

from sane_hf.generation.decode import decode_latents, tokens_to_state_dict
from sane_hf.generation.samplers import sample_kde
from sane_hf.tokenization import TokenNormalization


precision = sys.argv[1]
warmup = int(sys.argv[2])
runs = int(sys.argv[3])
batch_size = int(sys.argv[4]) if len(sys.argv) > 4 else None
model, layout = bs._resnet_layout(torch)
tokens = layout.tokenize(model.state_dict())[0][None]
normalization = TokenNormalization.fit(tokens, layout)
sane = bs._sane(torch)
generator = torch.Generator().manual_seed(0)
anchors = torch.randn(5, layout.num_tokens, sane.config.latent_dim, generator=generator)


def sample():
    samples = sample_kde(anchors, 1, 0.2, generator=generator)
    decoded = decode_latents(sane, samples.latents, layout.positions, batch_size, precision)
    return tokens_to_state_dict(decoded, layout, normalization)


state_dict = sample()
res = bench(sample, warmup, runs)
res.update(precision=precision, S=layout.num_tokens, keys=len(state_dict))
emit(f"ours_sample_{precision}", res)
