import pytest

from sane_hf.utils.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny networks: one thread is faster than two on the shared 2-core machines.
    with torch_threads(1):
        yield
