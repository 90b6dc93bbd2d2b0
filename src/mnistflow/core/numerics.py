"""How every stage that computes with torch does its arithmetic on the CPU (params `numerics`).

`portable`: fp32, with each library that picks its kernels by CPU pinned to one choice that every
x86-64 CPU with AVX2 and FMA runs the same way, Intel or AMD:
- ATen's own kernels to their AVX2 build (on an AVX-512 CPU they would take wider vectors, and so
  other summation orders);
- MKL (the linear layers' GEMMs) to its COMPATIBLE branch: its AVX2 branch serves Intel CPUs
  only, and on others MKL picks code of its own;
- oneDNN (the convolutions) capped at AVX2: its JIT kernels follow the instruction set, not the
  vendor; NNPACK off;
- a fixed thread count: MKL's COMPATIBLE branch and oneDNN's backward pass split sums by thread.
Two things still differ between vendors and are kept off the default path: MKL's vector square
root (`torch.sqrt`: adadelta, adagrad and rmsprop call it; the fused SGD and Adam do not) and
bf16 (CPUs without bf16 units emulate it; portable runs fp32).

`fast`: what PyTorch picks on this CPU, bf16 autocast where it has bf16 units: faster, and its
results are this machine's own.

The pins are environment variables that torch and MKL read once, when they load, so `pin` runs
before torch is imported, in every stage process (torchrun's workers inherit them). This module
imports no torch.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("portable", "fast")
# Read by ATen and MKL when they load; OMP and MKL thread counts are set beside them.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_DYNAMIC": "FALSE",  # MKL may otherwise use fewer threads than asked, and sum otherwise
    "OMP_DYNAMIC": "FALSE",
}


def threads_per_process(threads: int, processes: int) -> int:
    """A stage's `numerics.threads`, shared among its data-parallel processes."""
    return max(1, threads // processes)


def pin(mode: str, threads: int, processes: int = 1) -> None:
    """Set the pins of `mode` for this process and those it starts. `processes`: how many share
    the threads (train.nproc); under torchrun, its world size, on one machine or several."""
    if "torch" in sys.modules:
        raise RuntimeError("numerics.pin must run before torch is imported: torch and MKL read its "
                           "settings once, when they load")
    processes = int(os.environ.get("WORLD_SIZE") or processes)
    count = str(threads_per_process(threads, processes))
    os.environ.update(OMP_NUM_THREADS=count, MKL_NUM_THREADS=count)
    if mode == "portable":
        if not portable_cpu():
            log.warning("numerics portable: this CPU is not x86-64 with AVX2 and FMA (%s); it runs with what it "
                        "has, and its results will not match the baseline's", platform.machine())
        os.environ.update(PORTABLE_ENV)
    else:  # a parent's pins must not leak into a fast stage
        for key in PORTABLE_ENV:
            os.environ.pop(key, None)


def portable_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU runs the portable kernels: x86-64 with AVX2 and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return {"avx2", "fma"} <= flags


def what_ran() -> dict[str, str]:
    """What a run records beside its numerics mode: the kernels ATen used, MKL's branch, threads."""
    import torch

    return {"cpu_isa": torch.backends.cpu.get_cpu_capability(),
            "mkl_branch": os.environ.get("MKL_CBWR", "auto") if torch.backends.mkl.is_available() else "none",
            "threads": str(torch.get_num_threads())}
