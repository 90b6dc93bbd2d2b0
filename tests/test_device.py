import pytest
import torch

from mnistflow.device import autocast, select_device, set_determinism
from mnistflow.errors import ConfigError


def test_auto_prefers_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else \
        "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_absent_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="'cuda' was asked for but CUDA is not available"):
        select_device("cuda")


def test_autocast_is_a_no_op_on_the_cpu():
    with autocast(torch.device("cpu"), enabled=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_determinism_seeds_and_sets_flags():
    set_determinism(3, True)
    a = torch.rand(3)
    assert torch.are_deterministic_algorithms_enabled()
    set_determinism(3, False)
    assert torch.equal(a, torch.rand(3))
    assert not torch.are_deterministic_algorithms_enabled()
