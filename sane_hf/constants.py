"""File names and format versions shared across `sane_hf` (one place, so readers and writers agree)."""

# Sidecar files saved next to a SANE checkpoint (and inside a tokenized zoo under `meta/`).
SANE_LAYOUT_NAME = "sane_layout.json"
SANE_NORMALIZATION_NAME = "sane_normalization.json"

# Bumped whenever the JSON schema of a TokenLayout changes in a way older readers cannot parse.
LAYOUT_FORMAT_VERSION = 1
NORMALIZATION_FORMAT_VERSION = 1

PAPER_URL = "https://arxiv.org/abs/2406.09997"

# The package version (`sane_hf.__version__`), here so that writers of files can record it without importing the
# package root.
VERSION = "0.1.0"
