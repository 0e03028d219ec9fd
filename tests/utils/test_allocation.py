"""`retain_freed_memory`: a large buffer freed and allocated again is served from memory the process already has,
instead of fresh pages the kernel faults in (counted with getrusage's minor page faults, not timed)."""

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


# 64 MiB: far above glibc's largest automatic mmap threshold (32 MiB), like a training step's activations.
_PROGRAM = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from sane_hf.utils.allocation import retain_freed_memory

    applied = retain_freed_memory() if sys.argv[1] == "retain" else None

    def faults_of_fresh_buffer():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.empty(64 << 20, dtype=torch.uint8)
        buffer.fill_(1)  # touch every page
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del buffer
        return faults

    print(json.dumps({"applied": applied, "faults": [faults_of_fresh_buffer() for _ in range(8)]}))
    """
)
_PAGES = (64 << 20) // 4096


def _run(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    retained = _run("retain")
    assert retained["applied"] is True
    # Once the heap has grown to hold the buffer (in the first three rounds it touches up to two buffers' worth of
    # fresh heap, depending on where malloc places each one), every later round reuses it: no fresh pages.
    assert max(retained["faults"][-4:]) < _PAGES // 100, retained
    # Without it, glibc maps and unmaps the buffer every round, so each round faults its pages in again (unless the
    # kernel backs it with transparent huge pages, 512 pages a fault, on machines with THP "always").
    default = _run("default")
    thp_setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp_always = thp_setting.is_file() and "[always]" in thp_setting.read_text()
    assert thp_always or min(default["faults"][-4:]) > _PAGES // 2, default
