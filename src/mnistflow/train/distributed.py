"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU slot (gloo).

`train.nproc: N` makes the train stage run its own command again under torchrun
(`torch.distributed.run`) as N processes on this machine. Each process trains on its own slice
of every batch; gradients are all-reduced by DistributedDataParallel; rank 0 alone writes
outputs, checkpoints and the MLflow run. Started by torchrun directly (several machines), the stage takes the world it is given.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mnistflow.core.errors import ConfigError, MnistflowError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def launched() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def run_workers(nproc: int, device: torch.device) -> None:
    """Run this stage's command again as `nproc` workers under torchrun, in this process (so a
    signal reaches torchrun, which passes it on); return when all have finished."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"train.nproc: {nproc} processes, one per GPU, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s)")
    try:
        torchrun.run(torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--local-ranks-filter=0",
                                          *sys.argv]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            sys.exit(failure.exitcode)  # the worker has said why
        raise MnistflowError(f"training process {rank} died ({failure.signal_name()})") from None
    except SignalException as exc:
        raise KeyboardInterrupt(str(exc)) from None


def start(device: torch.device) -> World:
    """Join torchrun's process group (gloo on the CPU, NCCL on CUDA); alone, the single world."""
    if not launched():
        return SINGLE
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size())


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over the processes, in place (the same order on every run: gloo and NCCL's rings)."""
    if world.size > 1:
        dist.all_reduce(tensor)
    return tensor


def all_min(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def from_main(obj, world: World):
    """Rank 0's `obj` on every process (a checkpoint read on rank 0's machine only)."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
