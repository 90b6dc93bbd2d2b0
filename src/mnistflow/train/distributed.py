"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU slot (gloo).

`train.nproc: N` makes the train stage run its own command again under torchrun
(`torch.distributed.run`) as N processes on this machine. Each process trains on its own slice
of every batch; gradients are all-reduced by DistributedDataParallel; rank 0 alone writes
outputs, checkpoints and the MLflow run. Started by torchrun directly (several machines), the stage takes the world it is given.

A worker dies with its agent, even when the agent is killed with SIGKILL (as the OOM killer
does), through the kernel's parent-death signal: nothing trains on, or writes, after its stage.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

# Before torch loads (it reads this once): when a peer goes, c10d's C++ warnings print a C++ stack
# trace in every process; the one line `peers_or_stop` and `launch` print says what happened.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mnistflow.core.errors import ConfigError, MnistflowError  # noqa: E402


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()
AGENT_PID = "MNISTFLOW_AGENT_PID"  # set by the stage that starts torchrun: the workers' parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launched() -> bool:
    """Whether this process is one of torchrun's workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def run_workers(nproc: int, device: torch.device) -> None:
    """Run this stage's command again as `nproc` workers under torchrun, in this process (so a
    signal reaches torchrun, which passes it on); return when all have finished."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"train.nproc: {nproc} processes, one per GPU, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s)")
    launch(["--standalone", f"--nproc-per-node={nproc}", "--local-ranks-filter=0", *sys.argv])


def launch(args: list[str]) -> None:
    """torchrun with these arguments, as this process (its agent): a worker's failure is its own
    one line and exit status, a signal an interrupt, never torchrun's traceback and report."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    os.environ[AGENT_PID] = str(os.getpid())
    # torchrun's own log repeats in its words what the worker's line or ours says
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        parser = torchrun.get_args_parser()
        parser.error = lambda message: parser.exit(2, f"error: torchrun: {message}\n")  # not the whole usage
        torchrun.run(parser.parse_args(args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            sys.exit(failure.exitcode)  # the worker has said why
        raise MnistflowError(f"training process {rank} died ({failure.signal_name()})") from None
    except SignalException as exc:
        raise KeyboardInterrupt(str(exc)) from None
    except RendezvousError as exc:  # the agent that held the rendezvous is gone, or never came
        raise MnistflowError(f"torchrun's rendezvous failed: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                             "(another node's agent stopped, or is not reachable)") from None


def main(argv: list[str], prog: str = "mnistflow torchrun") -> None:
    """`mnistflow torchrun ARGS`: torchrun's own arguments (several machines: --nnodes,
    --rdzv-endpoint, ...), through `launch`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} [torchrun's options] stages/train.py MODEL DATA WEIGHTS METRICS HISTORY\n"
              f"torchrun, whose failures are one line each; see docs/data-parallel.md")
        return
    launch(argv)


def spans_machines() -> bool:
    """Whether this process's world spans several machines (torchrun's nodes)."""
    return launched() and os.environ["WORLD_SIZE"] != os.environ["LOCAL_WORLD_SIZE"]


def node_leader() -> bool:
    """Whether this process speaks for its machine (its first local process)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def start(device: torch.device) -> World:
    """Join torchrun's process group (gloo on the CPU, NCCL on CUDA); alone, the single world."""
    if not launched():
        return SINGLE
    die_with_parent()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size())


@contextmanager
def peers_or_stop(world: World):
    """A collective that fails because another process is gone (killed, its node lost) is one line
    here, in every process still standing, not a traceback of gloo's or NCCL's."""
    try:
        yield
    except RuntimeError as exc:  # DistError is one; gloo's transport errors are plain RuntimeErrors
        if world.size == 1 or not (isinstance(exc, dist.DistError) or not peers_answer()):
            raise
        reason = str(exc).splitlines()[0].rsplit("] ", 1)[-1].split(". ")[0]  # for the user: gloo's own words
        raise MnistflowError(f"training process {world.rank} of {world.size}: another one is gone ({reason}); "
                             "training stopped, the last finished epoch's checkpoint is kept") from None


def peers_answer(timeout_s: float = 10) -> bool:
    """Whether every process of the world still answers, asked after an error in training: under
    gloo a barrier that fails or times out means one is gone (NCCL says so with DistError)."""
    if dist.get_backend() != "gloo":
        return True
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
    except RuntimeError:
        return False
    return True


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker the moment its torchrun agent dies, however it dies.

    Chosen over a watchdog: no thread or process to keep alive, and no polling interval in
    which an orphan could still write a checkpoint or an MLflow metric. The signal follows the
    agent's thread that started the worker: torchrun starts them from its main thread."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    # The agent may have died before the prctl: then this process has another parent already.
    if os.getppid() != int(os.environ.get(AGENT_PID) or os.getppid()) or os.getppid() == 1:
        sys.exit(1)


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
