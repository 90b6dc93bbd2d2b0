"""The one place that decides the device, mixed precision and determinism."""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from mnistflow.errors import ConfigError

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
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # a torchrun worker: one GPU each
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    detail = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    log.info("device: %s%s", device, detail)
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA GPUs that support it (no loss scaling needed); else a no-op."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed everything; with `deterministic`, ask PyTorch for deterministic kernels."""
    if deterministic:
        # cuBLAS reads this when CUDA starts; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
