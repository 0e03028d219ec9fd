"""Loading a saved SANE folder with one clear line for every bad file, before transformers reads it.

Not part of the Hub-portable pair (`configuration_sane.py`, `modeling_sane.py`): it uses sane_hf's own helpers. A
local folder is checked in order: the weights' sizes and sha256 against `sane_checksums.json` (folders saved before
it existed are not verified), the `config.json`, every safetensors header, the shapes the config implies against the
stored ones; then `from_pretrained` loads it. The weight processor (`preprocessor_config.json`) is checked when
`sane_hf.tokenization.processing_sane.load_sane_processor` reads it. Hub repo ids go to `from_pretrained` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...utils.checks import check_weight_shapes
from ...utils.io import read_json, verify_file_checksum
from .configuration_sane import SaneConfig
from .modeling_sane import SANE_CHECKSUMS_NAME, SaneModel, SanePreTrainedModel


def check_sane_folder(folder: str | os.PathLike) -> None:
    """Raise a one-line `ValueError`/`FileNotFoundError` naming the file of a saved SANE folder that is damaged."""
    folder = Path(folder)
    checksums_file = folder / SANE_CHECKSUMS_NAME
    if checksums_file.is_file():
        checksums = read_json(checksums_file, "weight file name -> size and sha256")
        for name, recorded in checksums.items() if isinstance(checksums, dict) else []:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing; {checksums_file} lists it.")
            verify_file_checksum(folder / name, recorded, str(checksums_file))
    config_file = folder / "config.json"
    try:
        config = SaneConfig.from_pretrained(folder)
    except (ValueError, TypeError, OSError) as err:
        raise ValueError(
            f"{config_file}: {err}".rstrip(".") + "; expected a SANE config saved with the weights."
        ) from None
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in SaneModel(config).state_dict().items()}
    check_weight_shapes(sorted(folder.glob("*.safetensors")), expected, config_file)


def load_sane_folder(source: str | os.PathLike, cls: type[SanePreTrainedModel] = SaneModel) -> SanePreTrainedModel:
    """`cls.from_pretrained(source)`, after `check_sane_folder` for a local folder."""
    if Path(source).is_dir():
        check_sane_folder(source)
    return cls.from_pretrained(source)
