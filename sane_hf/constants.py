"""Constants shared across `sane_hf` (one place, so readers and writers agree)."""

PAPER_URL = "https://arxiv.org/abs/2406.09997"

# The package version (`sane_hf.__version__`), here so that writers of files can record it without importing the
# package root.
VERSION = "0.1.0"

# The splits of a tokenized zoo, named as `datasets` names them (docs/zoo_dataset_format.md#splits). Datasets of
# format version 1 called the validation split "val"; readers still take that name, and `canonical_split` maps it.
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
TEST_SPLIT = "test"
SPLIT_NAMES = (TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT)
OLD_SPLIT_NAMES = {"val": VALIDATION_SPLIT}


def canonical_split(name: str) -> str:
    """The split called `name`, under its current name (`"val"`, format version 1's name, is `"validation"`).

    Raises a `ValueError` naming the split and the names a zoo has for any other name.
    """
    if name in SPLIT_NAMES:
        return name
    if name in OLD_SPLIT_NAMES:
        return OLD_SPLIT_NAMES[name]
    raise ValueError(f"Unknown split {name!r}; a tokenized zoo has the splits {list(SPLIT_NAMES)}.")


def split_scores(scores: dict) -> dict:
    """Per-split scores (a probe record's `scores`) under the current split names; records written before format
    version 2 (results.json, probe records) keyed the validation score `"val"`."""
    return {OLD_SPLIT_NAMES.get(split, split): value for split, value in scores.items()}
