"""Generate networks with a pretrained SANE (docs/method.md#samplers): sample, decode, BN-condition, evaluate, save, push.

    python scripts/generate.py --config scripts/configs/generate_digits_cnn.yaml --model runs/sane --dataset runs/zoo_ds
    python scripts/generate.py --model runs/sane --dataset runs/zoo_ds --sampler kde --n 10 --output_dir runs/gen_kde
    python scripts/generate.py --model org/sane-cnn-digits --dataset org/sane-zoo-cnn-digits --sampler subsample \
        --push_to_hub org/sane-generated-cnn-digits   # ONE repo with model_000/, model_001/, ... subfolders

Every option: python scripts/generate.py --help
"""

from sane_hf.cli import main_generate


if __name__ == "__main__":
    main_generate()
