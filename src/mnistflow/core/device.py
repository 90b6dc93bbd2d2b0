"""The one place that decides the device, the numerics (with `numerics.pin`, which runs before
torch loads), mixed precision and determinism."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from pathlib import Path

import torch
from torch import nn

from mnistflow.core.errors import ConfigError
from mnistflow.core.numerics import threads_per_process

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; asking for one that is absent is an error."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    elif name == "cuda" and not cuda:
        raise ConfigError("device: 'cuda' was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    elif name == "mps" and not mps:
        raise ConfigError("device: 'mps' was asked for but MPS is not available here; use 'auto' or 'cpu'")
    device = torch.device(name)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # a torchrun worker: one GPU each
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    detail = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    log.info("device: %s%s", device, detail)
    return device


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next batch instead of handing it back to the
    OS after every one, which makes each batch's tensors page-fault in anew: 30% of a cnn epoch
    on the CPU. False where the C library is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # glibc's M_* option numbers
    return all([mallopt(trim_threshold, 1 << 30), mallopt(top_pad, 64 << 20),
                mallopt(mmap_threshold, 32 << 20)])  # 32 MiB: the largest glibc takes


def configure(mode: str, threads: int, processes: int = 1) -> None:
    """This process's torch settings for `numerics.mode`, after `numerics.pin` set the rest: the
    thread count, and in portable mode no NNPACK (convolutions go to oneDNN, capped at AVX2, or
    for the smallest to ATen's own GEMM path, on MKL's pinned branch)."""
    torch.set_num_threads(threads_per_process(threads, processes))
    torch.backends.nnpack.set_flags(mode != "portable")


def uses_bf16(device: torch.device, enabled: bool, mode: str = "fast") -> bool:
    """Whether `train.amp` runs bf16 on this device: on CUDA GPUs that support it, and with
    `fast` numerics on CPUs with bf16 units (AVX512-BF16, AMX, Arm BF16); elsewhere bf16 is
    emulated, slower than fp32, and rounds otherwise on other CPUs."""
    if not enabled:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and mode == "fast" and cpu_has_bf16()


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:  # the kernel's list of CPU features: x86 "flags", Arm "Features"
        features = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(features & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast when `bf16` (see `uses_bf16`; no loss scaling needed: bf16 has fp32's range);
    else a no-op."""
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fast_layout(model: nn.Module) -> nn.Module:
    """Conv weights channels-last: oneDNN's and cuDNN's fast layout (only 4-d weights change)."""
    return model.to(memory_format=torch.channels_last)


def set_determinism(seed: int, deterministic: bool, device: torch.device = torch.device("cpu")) -> None:
    """Seed everything; with `deterministic`, ask PyTorch for deterministic kernels on an
    accelerator. On the CPU the flag is not set: every op our models run is deterministic there
    already (the six models' weights after training steps are byte-identical with the flag on and
    off, bench/determinism.py), and setting it imports torch's compiler config (torch._inductor,
    about 1 s of every stage's start-up)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        return
    if deterministic:
        # cuBLAS reads this when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # Deterministic mode also fills every new tensor with NaN, a check for kernels that read
    # memory they never wrote; ours write all of theirs, and the fills cost 8% of a cnn epoch.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
