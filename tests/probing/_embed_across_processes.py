"""Run by tests/probing/test_embed.py under `torchrun --nproc_per_node 2` (CPU): embeds the test split of a
zoo with a saved SANE through `embed_zoo_across_processes` and, on every rank, writes what it got to OUT_<rank>.pt.

Usage: python _embed_across_processes.py ZOO_DIR SANE_DIR OUT_PREFIX
"""

import sys

import torch
from accelerate import PartialState

from sane_hf.data.hub_dataset import load_zoo_dataset
from sane_hf.models.sane import SaneModel
from sane_hf.probing.embed import embed_zoo_across_processes


def main() -> None:
    zoo_dir, sane_dir, out_prefix = sys.argv[1:4]
    torch.set_num_threads(1)
    zoo = load_zoo_dataset(zoo_dir)
    model = SaneModel.from_pretrained(sane_dir)
    out = embed_zoo_across_processes(
        model, zoo.splits["train"], zoo.layout, batch_size=2, pooling=["mean", "stats"], properties=["epoch"]
    )
    state = PartialState()
    payload = {
        "num_processes": state.num_processes,
        "embeddings": out["embeddings"],
        "stats": out["features"]["stats"],
        "rows": torch.from_numpy(out["rows"]),
        "epoch": torch.from_numpy(out["targets"]["epoch"]),
    }
    torch.save(payload, f"{out_prefix}_{state.process_index}.pt")


if __name__ == "__main__":
    main()
