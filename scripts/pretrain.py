"""Pretrain SANE on a tokenized zoo.

python scripts/pretrain.py --config scripts/configs/pretrain_digits_cnn.yaml --dataset runs/zoo_ds
accelerate launch scripts/pretrain.py --config scripts/configs/pretrain_resnet18_cifar100_paper.yaml ...
"""

from sane_hf.cli import main_pretrain


if __name__ == "__main__":
    main_pretrain()
