"""`mnistflow bench`: training speed, the tutorial's textbook loop against the project's in both
numerics modes (bench/train_speed.py, after `dvc repro preprocess` makes the splits it reads)."""
from __future__ import annotations

import subprocess
import sys

from mnistflow.cli import Parser
from mnistflow.core.errors import MnistflowError
from mnistflow.core.io import repo_root


def main(argv: list[str] | None = None, prog: str = "mnistflow bench") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    script = repo_root() / "bench" / "train_speed.py"
    if args.help:  # the benchmark's own options
        subprocess.run([sys.executable, str(script), "--help"], check=False)
        return
    for cmd in ([sys.executable, "-m", "dvc", "repro", "preprocess"], [sys.executable, str(script), *rest]):
        if subprocess.run(cmd, cwd=repo_root()).returncode != 0:
            raise MnistflowError(f"{' '.join(cmd[1:])} failed (its output is above)")
