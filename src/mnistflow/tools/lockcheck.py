"""CI's check that the committed dvc.lock records the committed code and params, without
running anything: a stage whose script, source module or params changed since the lock was
written is stale. Data and outputs that a fresh clone lacks are not its concern (`dvc pull`).

    mnistflow lock-check [REPO]
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from mnistflow.core.errors import MnistflowError, run_stage
from mnistflow.cli import Parser


def stale_stages(root: Path | str = ".") -> dict[str, list[str]]:
    """Stage -> what changed in its sources (scripts, modules, params) since dvc.lock, from
    `dvc status --json`; the outputs dvc.lock records are what a fresh clone may lack."""
    root = Path(root)
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MnistflowError(f"dvc status failed: {proc.stderr.strip() or proc.stdout.strip()}")
    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    produced = {out["path"] for stage in (lock or {}).get("stages", {}).values() for out in stage.get("outs", [])}
    stale = {}
    for stage, changes in json.loads(proc.stdout or "{}").items():
        reasons = []
        for change in changes:
            if isinstance(change, str):  # "changed command", "changed outs", ...
                reasons.append(change)
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict):  # params: {key: "modified" | "new" | "deleted"}
                    reasons += [f"param {key} {how}" for key, how in state.items()]
                elif not _holds_outputs(path, produced):
                    reasons.append(f"{path} {state}")
        if reasons:
            stale[stage.split(":")[-1]] = reasons
    return stale


def _holds_outputs(path: str, outs: set[str]) -> bool:
    """Is this dep (a file or folder) made by stages, or a folder of their outputs (models/)?"""
    return any(path == out or path.startswith(f"{out}/") or out.startswith(f"{path}/") for out in outs)


def main(argv: list[str] | None = None, prog: str = "mnistflow lock-check") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", type=Path, default=Path("."), help="the repo to check")
    root = parser.parse_args(argv).repo
    stale = stale_stages(root)
    if stale:
        lines = "\n".join(f"  {stage}: {', '.join(reasons)}" for stage, reasons in sorted(stale.items()))
        raise MnistflowError(f"dvc.lock is stale: these stages changed since it was written\n{lines}\n"
                             "Run `make repro` (or `dvc commit` for a change that cannot alter outputs) "
                             "and commit dvc.lock.")
    print("dvc.lock records the committed code and params of every stage")


if __name__ == "__main__":
    run_stage(main)
