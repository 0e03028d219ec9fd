"""Train a model zoo: `python scripts/make_zoo.py --config scripts/configs/zoo_digits_cnn.yaml [--output_dir ...]`."""

from sane_hf.cli import main_make_zoo


if __name__ == "__main__":
    main_make_zoo()
