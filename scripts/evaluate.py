"""Fine-tune saved generated networks and compare them with scratch training, the anchors and the noise control.

    python scripts/evaluate.py --models runs/generated                      # task and anchors from generation.json
    python scripts/evaluate.py --models runs/generated --task digits --finetune_epochs 5 --finetune_lr 1e-3

Writes evaluation.json, evaluation.md and evaluation.png into --output_dir (default: --models).
Every option: python scripts/evaluate.py --help
"""

from sane_hf.cli import main_evaluate


if __name__ == "__main__":
    main_evaluate()
