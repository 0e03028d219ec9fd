"""The end-to-end smoke job on the embedded default (sklearn digits-sized CNN): what `scripts/quickstart.py` runs.

It exercises the core path a newcomer needs to trust before anything else: tokenize a zoo model, round-trip it bit
for bit, encode/decode it with a fresh SANE (haloed windows over the whole sequence), and save/reload SANE through
`AutoModel` with the layout and normalization next to the weights. Later stages (zoo, pretraining, probing,
generation) hook in here as they land.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel

from .models.sane import SaneConfig, SaneModel
from .tokenization import TokenLayout, TokenNormalization
from .utils.io import write_json_atomic
from .zoo_models import build_zoo_model


logger = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """Options of the quickstart job.

    Args:
        output_dir (`str`, *optional*, defaults to `"outputs/quickstart"`): where the SANE folder and summary go.
        architecture (`str`, *optional*, defaults to `"cnn_s"`): zoo architecture (a registry name).
        token_size (`int`, *optional*, defaults to 64): token width `T`.
        seed (`int`, *optional*, defaults to 0): seed of the zoo model and SANE initialization.
    """

    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Output folder."})
    architecture: str = field(default="cnn_s", metadata={"help": "Zoo architecture of the model to tokenize."})
    token_size: int = field(default=64, metadata={"help": "Token width T."})
    seed: int = field(default=0, metadata={"help": "Seed of the zoo model and of SANE's initialization."})


def run_quickstart(config: QuickstartConfig) -> dict:
    """Run the smoke job and return (and write to `<output_dir>/quickstart.json`) a summary of what was checked."""
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    # 1. A zoo member for the embedded default task: 8x8x1 digits, 10 classes.
    zoo_model = build_zoo_model(config.architecture, in_channels=1, input_size=8, num_classes=10, padding="auto")
    state_dict = zoo_model.state_dict()
    layout = TokenLayout.from_module(zoo_model, token_size=config.token_size)
    tokens, mask, positions = layout.tokenize(state_dict)
    restored = layout.detokenize(tokens)
    exact = all(torch.equal(restored[k], v) for k, v in state_dict.items())
    if not exact:
        raise RuntimeError("Tokenize -> detokenize did not reproduce the checkpoint bit for bit.")
    logger.info("Tokenized %s: %s (round trip exact)", config.architecture, layout)

    # 2. A fresh SANE sized for this layout; whole-model encode/decode through haloed windows.
    normalization = TokenNormalization.fit(tokens[None], layout)
    window = min(32, layout.num_tokens)
    sane_config = SaneConfig(
        token_size=layout.token_size,
        d_model=64,
        n_heads=4,
        n_layers=2,
        latent_dim=16,
        window_size=window,
        halo_size=window // 4,
        max_positions=[max(p, window) for p in layout.max_positions],
    )
    sane = SaneModel(sane_config).eval()
    sane.sane_layout = layout.to_dict()
    sane.sane_normalization = normalization.to_dict()
    inputs = normalization.normalize(tokens, layout)[None]
    with torch.no_grad():
        latents = sane.haloed_encode(inputs, positions)
        reconstruction = sane.haloed_decode(latents, positions)
        embedding = sane.embed(inputs, positions)
    decoded_state_dict = layout.detokenize(normalization.denormalize(reconstruction[0], layout))
    zoo_model.load_state_dict(decoded_state_dict)
    logits = zoo_model(torch.randn(4, 1, 8, 8))
    reconstruction_mse = float(((reconstruction[0] - inputs[0])[mask] ** 2).mean())
    logger.info(
        "Encoded %d tokens to latents %s; embedding %s",
        layout.num_tokens,
        tuple(latents.shape),
        tuple(embedding.shape),
    )

    # 3. Save and reload with AutoModel; the layout and normalization travel with the weights.
    sane_dir = output_dir / "sane"
    sane.save_pretrained(sane_dir)
    reloaded = AutoModel.from_pretrained(sane_dir)
    with torch.no_grad():
        same_embedding = torch.equal(reloaded.embed(inputs, positions), embedding)
    same_layout = TokenLayout.from_dict(reloaded.sane_layout) == layout
    if not (same_embedding and same_layout):
        raise RuntimeError("The reloaded SANE differs from the saved one.")

    summary = {
        "config": asdict(config),
        "zoo_model": {
            "architecture": config.architecture,
            "parameters": sum(p.numel() for p in zoo_model.parameters()),
        },
        "layout": {"num_tokens": layout.num_tokens, "num_layers": layout.num_layers, "token_size": layout.token_size},
        "round_trip_exact": exact,
        "sane_parameters": sane.num_parameters(),
        "latents_shape": list(latents.shape),
        "embedding_shape": list(embedding.shape),
        "untrained_reconstruction_mse": reconstruction_mse,
        "decoded_model_logits_shape": list(logits.shape),
        "reloaded_with_automodel": type(reloaded).__name__,
        "reload_exact": same_embedding and same_layout,
        "sane_dir": str(sane_dir),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(output_dir / "quickstart.json", summary)
    return summary
