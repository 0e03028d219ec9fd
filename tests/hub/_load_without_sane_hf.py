"""Run by tests/hub/test_hub_integration.py in a fresh process pointed at the local Hub mirror (`HF_ENDPOINT`).

Loads the SANE checkpoint and the tokenized zoo by repo id WITHOUT `sane_hf`: the model through the modeling code
shipped in its repo (`trust_remote_code=True`), the zoo with plain `datasets.load_dataset`. Writes what it loaded
into OUT (`sane.safetensors` + `sane.json`, `zoo_<split>.safetensors` + `zoo.json`) and fails if anything imported
`sane_hf`.

Usage: python _load_without_sane_hf.py OUT SANE_REPO ZOO_REPO
"""

import json
import sys
from pathlib import Path

import datasets
import torch
from safetensors.torch import save_file
from transformers import AutoModel


def main(out: Path, sane_repo: str, zoo_repo: str) -> None:
    model, loading_info = AutoModel.from_pretrained(sane_repo, trust_remote_code=True, output_loading_info=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "sane.safetensors")
    meta = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "loading_info": {k: sorted(map(str, v)) for k, v in loading_info.items()},
        "sane_layout": model.sane_layout,
        "sane_normalization": model.sane_normalization,
    }
    (out / "sane.json").write_text(json.dumps(meta))

    zoo = datasets.load_dataset(zoo_repo).with_format("torch")
    zoo_meta = {"splits": {}}
    for split, dataset in zoo.items():
        rows = dataset[:]
        save_file({"tokens": rows["tokens"].contiguous()}, out / f"zoo_{split}.safetensors")
        zoo_meta["splits"][split] = {"model_id": list(rows["model_id"]), "epoch": rows["epoch"].tolist()}
    (out / "zoo.json").write_text(json.dumps(zoo_meta))

    leaked = sorted(name for name in sys.modules if name == "sane_hf" or name.startswith("sane_hf."))
    if leaked:
        raise SystemExit(f"sane_hf was imported: {leaked[:5]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), *sys.argv[2:4])
