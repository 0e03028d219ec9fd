"""Render the example cards in `model_cards/examples/` from real artifacts of the default digits pipeline.

The cards' prose lives only in the templates (`sane_hf/hub/templates/`); this script calls the same builders the
pipeline uses and writes their output here, so a reader sees what a published card looks like. Nothing is pushed and
the input folders are not modified.

    python model_cards/render_examples.py --sane runs/sane --dataset runs/zoo_ds \
        --probe_results runs/predict/results.json [--generate]

`--generate` also samples networks from the SANE with `scripts/configs/generate_digits_cnn.yaml` (without the
fine-tuning evaluation, which takes minutes) to render the generated-model cards.
"""

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import yaml

from sane_hf.data.hub_dataset import load_zoo_dataset, load_zoo_meta
from sane_hf.generation import GenerateConfig, generate_models, save_generated_models
from sane_hf.hub import build_dataset_card, build_sane_card, zoo_summary
from sane_hf.models.sane import SaneModel


logger = logging.getLogger("render_examples")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORG = "org"
SANE_REPO, ZOO_REPO, GENERATED_REPO = f"{ORG}/sane-cnn-digits", f"{ORG}/sane-zoo-cnn-digits", f"{ORG}/sane-generated"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sane", required=True, help="SANE folder written by sane-pretrain.")
    parser.add_argument("--dataset", required=True, help="Tokenized zoo folder written by sane-convert-zoo.")
    parser.add_argument("--probe_results", help="results.json of sane-predict for this SANE and zoo.")
    parser.add_argument("--generate", action="store_true", help="Also generate networks and render their cards.")
    parser.add_argument("--output_dir", default=str(HERE / "examples"), help="Where the rendered cards go.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    info, _, _ = load_zoo_meta(args.dataset)
    build_dataset_card(info, repo_id=ZOO_REPO, root=args.dataset).save(output / "sane-zoo-cnn-digits.md")
    # As if both had been pushed and probed by id: the card names the Hub ids, not the local folders.
    probe_results = None
    if args.probe_results:
        probe_results = json.loads(Path(args.probe_results).read_text())
        probe_results["dataset"]["source"] = probe_results["config"]["dataset"] = ZOO_REPO
    sane_card = build_sane_card(
        args.sane, repo_id=SANE_REPO, probe_results=probe_results, zoo=zoo_summary(info, ZOO_REPO)
    )
    sane_card.save(output / "sane-cnn-digits.md")

    if args.generate:
        values = yaml.safe_load((REPO / "scripts" / "configs" / "generate_digits_cnn.yaml").read_text())
        values.update(
            model=SANE_REPO, dataset=ZOO_REPO, push_to_hub=GENERATED_REPO, base_model=SANE_REPO, evaluate=False
        )
        config = GenerateConfig(**values)
        sane = SaneModel.from_pretrained(args.sane).eval()
        result = generate_models(sane, load_zoo_dataset(args.dataset), config)
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_generated_models(result, Path(tmp) / "generated", plot=False)
            shutil.copyfile(folder / "README.md", output / "sane-generated-repo.md")
            shutil.copyfile(folder / "model_000" / "README.md", output / "sane-generated-model_000.md")
    logger.info("Rendered cards into %s: %s", output, sorted(p.name for p in output.glob("*.md")))


if __name__ == "__main__":
    main()
