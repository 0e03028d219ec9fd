"""Run by tests/hub/test_hub_integration.py in a fresh process pointed at the local Hub mirror (`HF_ENDPOINT`).

Loads SANE-generated ViTs WITHOUT `sane_hf`, as any transformers user would: `AutoModelForImageClassification` by repo
id (`subfolder="model_000"`, ...) and from a local folder. Writes each model's logits on the images in IN (a
safetensors file with `pixel_values`) to OUT/logits_<name>.safetensors, its class and loading info to OUT/vit.json, and
fails if anything imported `sane_hf`.

Usage: python _load_vit_without_sane_hf.py OUT IN REPO NUM_MODELS LOCAL_FOLDER
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification


def main(out: Path, images: Path, repo: str, num_models: int, local_folder: str) -> None:
    pixel_values = load_file(images)["pixel_values"]
    meta = {}
    sources = {f"repo_{i:03d}": (repo, {"subfolder": f"model_{i:03d}"}) for i in range(num_models)}
    sources["local"] = (local_folder, {})
    for name, (source, kwargs) in sources.items():
        model, info = AutoModelForImageClassification.from_pretrained(source, output_loading_info=True, **kwargs)
        model.eval()
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits
        save_file({"logits": logits.contiguous()}, out / f"logits_{name}.safetensors")
        meta[name] = {"class": type(model).__name__, "loading_info": {k: sorted(map(str, v)) for k, v in info.items()}}
    (out / "vit.json").write_text(json.dumps(meta))
    leaked = sorted(name for name in sys.modules if name == "sane_hf" or name.startswith("sane_hf."))
    if leaked:
        raise SystemExit(f"sane_hf was imported: {leaked[:5]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
