import pytest
import torch

from sane_hf.utils.threads import torch_threads


@pytest.fixture
def caller_has_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_sets_the_count_inside_and_restores_the_callers(caller_has_one_thread):
    with torch_threads(3) as inside:
        assert inside == 3
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("keep", [0, None])
def test_zero_or_none_keeps_torchs_setting(caller_has_one_thread, keep):
    with torch_threads(keep) as inside:
        assert inside == 1
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)  # a count changed inside the block does not leak out either
    assert torch.get_num_threads() == 1


def test_restores_on_error(caller_has_one_thread):
    with pytest.raises(KeyError, match="inside"):
        with torch_threads(2):
            raise KeyError("inside")
    assert torch.get_num_threads() == 1
