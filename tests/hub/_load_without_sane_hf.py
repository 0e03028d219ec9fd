"""Run by tests/hub/test_hub_integration.py in a fresh process pointed at the local Hub mirror (`HF_ENDPOINT`).

Loads the SANE checkpoint, its weight processor and the tokenized zoo by repo id WITHOUT `sane_hf`: the model and
the processor through the code shipped in its repo (`trust_remote_code=True`), the zoo with plain
`datasets.load_dataset`. Writes what it loaded into OUT (`sane.safetensors` + `sane.json`, `zoo_<split>.safetensors`
+ `zoo.json`, and `processor.safetensors`: two train checkpoints' tokens, detokenized by the processor and tokenized
again) and fails if anything imported `sane_hf`.

Usage: python _load_without_sane_hf.py OUT SANE_REPO ZOO_REPO
"""

import json
import sys
from pathlib import Path

import datasets
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file
from transformers import AutoModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module


def main(out: Path, sane_repo: str, zoo_repo: str) -> None:
    model, loading_info = AutoModel.from_pretrained(sane_repo, trust_remote_code=True, output_loading_info=True)
    # What `AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)` does after reading `auto_map` (that
    # path itself is tested on a folder in tests/tokenization/test_processing_sane.py): its first probe, of
    # processor_config.json, which a SANE repo does not have, gets "repository not found" from the olah mirror where
    # the Hub answers 404.
    auto_map = json.loads(Path(hf_hub_download(sane_repo, "preprocessor_config.json")).read_text())["auto_map"]
    processor_class = get_class_from_dynamic_module(auto_map["AutoFeatureExtractor"], sane_repo)
    processor = processor_class.from_pretrained(sane_repo)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "sane.safetensors")
    meta = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "loading_info": {k: sorted(map(str, v)) for k, v in loading_info.items()},
        "processor": processor.to_dict(),
        "processor_class": f"{type(processor).__module__}.{type(processor).__qualname__}",
    }
    (out / "sane.json").write_text(json.dumps(meta))

    zoo = datasets.load_dataset(zoo_repo).with_format("torch")
    # The processor's round trip on zoo checkpoints: tokens -> state_dicts (de-normalized, detokenized) -> tokens.
    tokens = zoo["train"][:2]["tokens"]
    state_dicts = processor.decode(tokens)
    inputs = processor(state_dicts)
    save_file(
        {
            "tokens": tokens.contiguous(),
            "retokenized": inputs["tokens"].contiguous(),
            "positions": inputs["positions"].contiguous(),
            "embeddings": model.embed(**inputs),
            **{f"state_dict.{key}": value.contiguous() for key, value in state_dicts[0].items()},
        },
        out / "processor.safetensors",
    )
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
