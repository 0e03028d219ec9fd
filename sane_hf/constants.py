"""Constants shared across `sane_hf` (one place, so readers and writers agree)."""

PAPER_URL = "https://arxiv.org/abs/2406.09997"

# The package version (`sane_hf.__version__`), here so that writers of files can record it without importing the
# package root.
VERSION = "0.1.0"
