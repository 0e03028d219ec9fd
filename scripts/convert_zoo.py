"""Tokenize a model zoo into a Hub-style dataset folder (and optionally push it to the Hub).

python scripts/convert_zoo.py --config scripts/configs/convert_digits_cnn.yaml
python scripts/convert_zoo.py --zoo_dir runs/zoo --output_dir runs/zoo_ds --token_size 64 [--push_to_hub org/name]
"""

from sane_hf.cli import main_convert_zoo


if __name__ == "__main__":
    main_convert_zoo()
