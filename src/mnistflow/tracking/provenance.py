"""What made a run: the git commit and whether the tree was dirty, the DVC experiment, the
weights' md5, where it ran; and the run's name built from them."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path

from mnistflow.core.io import repo_root
from mnistflow.tracking.store import mlflow_module


def made_by() -> str:
    """What made a run: the DVC experiment's name, else the commit (`git describe --dirty`:
    `-dirty` for uncommitted changes)."""
    return os.environ.get("DVC_EXP_NAME") or _git("describe", "--always", "--dirty", "--abbrev=7") or "no git"


def run_label(model: str) -> str:
    """A run's name: the model and what made it, e.g. `cnn · lr-sweep-3` or `cnn · 82d3e34`."""
    return f"{model} · {made_by()}"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state() -> dict[str, str]:
    """The commit of the code, whether the tree had uncommitted changes, and the short `baseline`
    a column shows: the commit a DVC experiment was made from, else that commit."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown", "baseline": "unknown"}
    return {"git_commit": commit, "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
            "baseline": (os.environ.get("DVC_EXP_BASELINE_REV") or commit)[:7]}


def file_md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def made_from() -> dict[str, str]:
    """The tags that say what made any run of ours (a model's, an evaluation's, a report's): the
    git state, and the DVC experiment when one runs."""
    tags = git_state()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def node() -> str:
    """The machine a run ran on, as the runs table shows it: MNISTFLOW_NODE (a name a team
    chose, or a container's) or the host name."""
    return os.environ.get("MNISTFLOW_NODE") or socket.gethostname()


def run_tags(dataset: str, device) -> dict[str, str]:
    """The few tags a user filters by; the rest of what made a run is in its lineage.json."""
    return {"dataset": dataset, "device": str(device), "node": node(), **made_from()}


def environment() -> dict[str, str]:
    """What else describes where a run ran: recorded in its lineage.json, not as tags."""
    import torch

    env = {"torch_version": torch.__version__, "mlflow_version": mlflow_module().__version__,
           "dvc_root": str(repo_root()), "host": socket.gethostname()}
    for var in ("DVC_STAGE", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            env[var.lower()] = os.environ[var]
    return env
