"""Run by tests/hub/test_hub_integration.py in a fresh process pointed at the local Hub mirror (`HF_ENDPOINT`).

Loads the three artifacts by repo id through the public APIs with `sane_hf` imported (so `AutoModel` knows the
`sane` model type without remote code) and writes what it loaded into OUT for the test to compare:
`sane.safetensors` + `sane.json`, `zoo_<split>.safetensors` + `zoo.json`, `generated.safetensors` + `generated.json`,
`usage.safetensors` (the outputs of the SANE card's own usage snippet, run as written), and
`init_from.safetensors` (the weights a one-step `pretrain` with `--init_from SANE_REPO --dataset ZOO_REPO
--dataset_revision <the zoo's format tag>` holds when its first step starts) and `dataset_revision.json` (that
pretraining's record of the revision, and the error a revision the repo does not have gives), and
`members.safetensors` + `members.json` (MEMBER_REPOS read as a zoo of Hub model repos, `open_zoo(..., "models")`).

`streamed/` is a SANE pretrained by `sane-pretrain --streaming true` on ZOO_REPO streamed from the mirror
(`STREAMED_RUN`'s options).

Usage: python _load_with_sane_hf.py OUT SANE_REPO ZOO_REPO GENERATED_REPO MEMBER_REPO [MEMBER_REPO ...]
"""

import json
import re
import sys
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file
from transformers import AutoModel

import sane_hf
from sane_hf.cli import main_pretrain
from sane_hf.data import load_zoo_dataset, open_zoo
from sane_hf.data.info import ZOO_DATASET_TAG
from sane_hf.zoo_models import load_zoo_model


STREAMED_RUN = [
    *("--streaming", "true", "--shuffle_buffer", "0", "--epochs", "3", "--batch_size", "4", "--window_size", "32"),
    *("--d_model", "16", "--n_heads", "2", "--n_layers", "1", "--latent_dim", "8", "--projection_dim", "8"),
    *("--logging_steps", "1", "--seed", "5", "--num_threads", "1"),
]


def main(out: Path, sane_repo: str, zoo_repo: str, generated_repo: str, *member_repos: str) -> None:
    model, loading_info = AutoModel.from_pretrained(sane_repo, output_loading_info=True)
    processor = sane_hf.SaneProcessor.from_pretrained(sane_repo)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "sane.safetensors")
    meta = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "is_sane_hf_class": type(model) is sane_hf.SaneModel,
        "loading_info": {k: sorted(map(str, v)) for k, v in loading_info.items()},
        "processor": processor.to_dict(),
        "is_sane_hf_processor": type(processor) is sane_hf.SaneProcessor,
        # The layout and normalization read on their own, by repo id at a revision (through the Hub cache).
        "layout": sane_hf.TokenLayout.from_pretrained(sane_repo, revision="main").to_dict(),
        "normalization": sane_hf.TokenNormalization.from_pretrained(sane_repo, revision="main").to_dict(),
        "config": model.config.to_dict(),
    }
    (out / "sane.json").write_text(json.dumps(meta))

    zoo = load_zoo_dataset(zoo_repo)
    zoo_meta = {"splits": {}, "layout": zoo.layout.to_dict(), "normalization": zoo.normalization.to_dict()}
    for split, dataset in zoo.splits.items():
        rows = dataset[:]
        save_file({"tokens": rows["tokens"].contiguous()}, out / f"zoo_{split}.safetensors")
        zoo_meta["splits"][split] = {"model_id": list(rows["model_id"]), "epoch": rows["epoch"].tolist()}
    (out / "zoo.json").write_text(json.dumps(zoo_meta))

    generated = load_zoo_model(generated_repo, subfolder="model_000")
    save_file({k: v.contiguous() for k, v in generated.state_dict().items()}, out / "generated.safetensors")
    (out / "generated.json").write_text(json.dumps({"zoo_name": generated.zoo_name, "training": generated.training}))

    # The SANE card's first usage snippet, exactly as published (only the zoo placeholder is filled in when the
    # SANE was trained on a local folder).
    card = Path(hf_hub_download(sane_repo, "README.md")).read_text(encoding="utf-8")
    usage = card.split("## Usage", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    snippet = snippet.replace('"<tokenized zoo>"', repr(zoo_repo))
    namespace: dict = {}
    exec(compile(snippet, "sane card usage", "exec"), namespace)
    save_file(
        {
            "embeddings": namespace["embeddings"].contiguous(),
            "reconstruction": namespace["reconstruction"].contiguous(),
            "tokens": namespace["tokens"].contiguous(),
        },
        out / "usage.safetensors",
    )
    # The same embedding computed here directly, from the objects loaded above.
    direct = model.embed(namespace["tokens"], zoo.layout.positions)
    save_file({"embeddings": direct.contiguous()}, out / "usage_direct.safetensors")

    save_file(weights_at_first_step(sane_repo, zoo_repo, out / "init_from"), out / "init_from.safetensors")
    revisions = {"recorded": json.loads((out / "init_from" / "trainer_state.json").read_text())["dataset"]}
    try:
        weights_at_first_step(sane_repo, zoo_repo, out / "no_such_revision", revision="no-such-revision")
    except Exception as err:  # noqa: BLE001  (whatever the Hub client raises, the test checks it is about the revision)
        revisions["missing_revision_error"] = f"{type(err).__name__}: {err}"
    (out / "dataset_revision.json").write_text(json.dumps(revisions))

    # `sane-pretrain --dataset <repo id> --streaming true`: pretraining over the zoo streamed from the Hub.
    main_pretrain(["--dataset", zoo_repo, "--output_dir", str(out / "streamed"), *STREAMED_RUN])

    members = list(open_zoo(",".join(member_repos), "models"))
    save_file(
        {f"{r.model_id}/{k}": v.contiguous() for r in members for k, v in r.state_dict.items()},
        out / "members.safetensors",
    )
    records = [
        {"model_id": r.model_id, "architecture": r.architecture, "model_kwargs": r.model_kwargs} for r in members
    ]
    (out / "members.json").write_text(json.dumps(records))


def weights_at_first_step(
    sane_repo: str, zoo_repo: str, output_dir: Path, revision: str = ZOO_DATASET_TAG
) -> dict[str, torch.Tensor]:
    """Pretrain one step from `--init_from` a Hub id on the zoo at `revision`; the weights the model holds when
    `train_step` first runs."""
    from sane_hf.training import loop as pretrain_loop
    from sane_hf.training.configs import PretrainConfig

    captured: dict[str, torch.Tensor] = {}
    real_train_step = pretrain_loop.train_step

    def capturing_train_step(model, *args, **kwargs):
        if not captured:
            captured.update({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
        return real_train_step(model, *args, **kwargs)

    pretrain_loop.train_step = capturing_train_step
    config = PretrainConfig(
        dataset=zoo_repo,
        dataset_revision=revision,
        init_from=sane_repo,
        output_dir=str(output_dir),
        batch_size=2,
        max_steps=1,
        num_threads=1,
    )
    try:
        pretrain_loop.pretrain(config)
    finally:
        pretrain_loop.train_step = real_train_step
    return captured


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), *sys.argv[2:])
