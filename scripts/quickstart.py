"""Run the quickstart on the embedded default: `python scripts/quickstart.py [--output_dir ...]`."""

from sane_hf.cli import main_quickstart


if __name__ == "__main__":
    main_quickstart()
