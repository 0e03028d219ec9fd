"""Fixtures of the data tests: a tiny zoo in our own format and its tokenized dataset (writers: `zoo_tools`, in
tests/conftest.py)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sane_zoo(tmp_path_factory, zoo_tools) -> Path:
    """8 cnn_s models x epochs 0..3, plus one unfinished model (no DONE)."""
    return zoo_tools.write_sane_hf_zoo(
        tmp_path_factory.mktemp("zoo") / "zoo", num_models=9, num_epochs=3, unfinished=(8,)
    )


@pytest.fixture(scope="session")
def converted(tmp_path_factory, sane_zoo) -> Path:
    """`sane_zoo` converted with T=16 (a few tokens per row, so windows have room)."""
    from sane_hf.data import ConvertConfig, convert_zoo

    output = tmp_path_factory.mktemp("converted") / "zoo_ds"
    # Not canonicalized: the tests compare the stored tokens with the raw checkpoints.
    config = ConvertConfig(zoo_dir=str(sane_zoo), output_dir=str(output), token_size=16, canonicalize=False)
    convert_zoo(config, show_progress=False)
    return output
