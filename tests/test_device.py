import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistflow.core import device
from mnistflow.core.device import autocast, cpu_has_bf16, fast_layout, select_device, set_determinism, uses_bf16
from mnistflow.models import create_model
from mnistflow.core.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "a GPU")
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_absent_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="'cuda' was asked for but CUDA is not available"):
        select_device("cuda")


@pytest.mark.parametrize("mode", ["portable", "fast"])
@pytest.mark.parametrize("has_bf16", [True, False])
@pytest.mark.parametrize("enabled", [True, False])
def test_amp_runs_bf16_on_a_cpu_only_in_fast_mode_where_it_has_bf16_units(monkeypatch, has_bf16, enabled, mode):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
    cpu = torch.device("cpu")
    expected = has_bf16 and enabled and mode == "fast"
    assert uses_bf16(cpu, enabled, mode) == expected
    with autocast(cpu, uses_bf16(cpu, enabled, mode)):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if expected else torch.float32)
    assert not uses_bf16(torch.device("meta"), enabled, mode)  # neither CPU nor CUDA: fp32


@pytest.mark.parametrize("features, expected", [
    ("flags\t\t: fpu sse2 avx2 fma avx512f avx512bw amx_bf16 amx_tile", True),  # Intel with AMX
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),       # AMD Zen 4
    ("flags\t\t: fpu sse2 avx2 fma avx512f avx512bw", False),                   # AVX-512 without bf16
    ("flags\t\t: fpu sse2 avx2 fma", False),
    ("Features\t: fp asimd sve bf16 i8mm", True),                               # Arm
])
def test_bf16_units_are_read_from_the_cpus_features(tmp_path, features, expected):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{features}\n\n")
    assert cpu_has_bf16(tmp_path / "cpuinfo") is expected
    assert cpu_has_bf16(tmp_path / "absent") is False


def test_fast_layout_makes_conv_weights_channels_last_and_changes_no_output():
    torch.manual_seed(0)
    plain = create_model("cnn").eval()
    fast = fast_layout(create_model("cnn")).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.conv2.weight.is_contiguous() and fast.fc1.weight.is_contiguous()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fast(x), plain(x))


def test_determinism_seeds_and_sets_flags_on_an_accelerator_only():
    meta = torch.device("meta")  # stands for an accelerator: only its type is read
    try:
        set_determinism(3, True, meta)
        a = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # no NaN fill of new tensors
        set_determinism(3, False, meta)
        assert torch.equal(a, torch.rand(3))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    # On the CPU: seeded, and torch's compiler config (about 1 s to import) is left alone.
    code = ("import sys, torch; from mnistflow.core.device import set_determinism; set_determinism(3, True); "
            "print('torch._inductor.config' in sys.modules, torch.are_deterministic_algorithms_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    assert out.split() == ["False", "False"]


FREED_BYTES = """
import ctypes, sys
if sys.argv[1] == "keep":  # only here: the module loads torch (2 s), which the default needs not
    from mnistflow.core.device import keep_freed_memory
    assert keep_freed_memory()
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
block = libc.malloc(16 << 20)
libc.free(block)
print(libc.mallinfo2().fordblks)  # bytes free but still held by the process
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_kept_for_the_next_batch():
    held = {mode: int(subprocess.run([sys.executable, "-c", FREED_BYTES, mode], capture_output=True, text=True,
                                     check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)}).stdout)
            for mode in ("default", "keep")}
    assert held["keep"] >= 16 << 20 > held["default"]  # by default a 16 MiB block goes back to the OS
