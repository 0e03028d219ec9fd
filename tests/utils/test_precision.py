import logging

import pytest
import torch

from sane_hf.utils.precision import has_fast_bf16, precision_autocast, resolve_precision


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512f"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
        (set(), False),
    ],
)
def test_fast_bf16_needs_native_bf16_instructions(flags, expected):
    assert has_fast_bf16("cpu", flags=flags) is expected


def test_auto_resolves_to_what_the_machine_has_and_logs_it(caplog):
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        flags = next(line for line in handle if line.startswith("flags")).split(":", 1)[1].split()
    expected = "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"
    with caplog.at_level(logging.INFO, logger="sane_hf.utils.precision"):
        assert resolve_precision("auto", "cpu", "embedding") == expected
    assert f"precision='auto' for embedding: {expected}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sane_hf.utils.precision"):
        assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert caplog.text == ""  # only "auto" makes a choice worth logging
    with pytest.raises(ValueError, match=r"`precision` must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_precision_autocast_switches_matmul_dtype():
    a = torch.ones(2, 2)
    with precision_autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with precision_autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32
