"""CI's reproducibility gate, after `dvc repro` on the runner: the dvc.lock the runner computed
must be the committed one. When it is not, each output that differs is named, with the numerics
the runner had, and the exit status is 1.

    mnistflow repro-gate
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

from mnistflow.cli import Parser
from mnistflow.tools.diffreport import lock_at

FIX = ("If this change meant to change them, commit the dvc.lock that `dvc repro` wrote (make repro, then "
       "git add dvc.lock). If not, the outputs depend on the machine: see docs/reproducibility.md")


def differences(committed: dict, computed: dict) -> list[str]:
    """One line per output whose hash differs, and per stage whose inputs differ with the same
    outputs (the committed dvc.lock predates a change to its code or params)."""
    lines = []
    for name in dict.fromkeys([*committed, *computed]):
        before, after = committed.get(name), computed.get(name)
        if before == after:
            continue
        if before is None or after is None:
            lines.append(f"{name}: {'not in the committed dvc.lock' if before is None else 'not run here'}")
            continue
        outs = {o["path"]: o.get("md5") for o in before.get("outs", [])}
        changed = [(o["path"], outs.get(o["path"]), o.get("md5")) for o in after.get("outs", [])
                   if outs.get(o["path"]) != o.get("md5")]
        lines += [f"{name}: {path}: committed {old}, computed here {new}" for path, old, new in changed]
        if not changed:
            lines.append(f"{name}: its code or params differ from what the committed dvc.lock records (outputs equal)")
    return lines


def runner() -> str:
    """The numerics this runner had: its CPU, whether it runs the portable kernels, the mode."""
    from mnistflow.core.config import load_config
    from mnistflow.core.numerics import portable_cpu

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    mode = load_config("params.yaml").numerics.mode
    return (f"this runner: {cpu}; numerics {mode}; "
            f"{'AVX2 and FMA: the portable kernels' if portable_cpu() else 'no AVX2 and FMA: not the portable kernels'}")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def main(argv: list[str] | None = None, prog: str = "mnistflow repro-gate") -> None:
    Parser(prog=prog, description=__doc__.splitlines()[0]).parse_args(argv)
    lines = differences(lock_at("HEAD"), lock_at(None))
    if not lines:
        print("reproducible: dvc.lock is what this runner computed, output for output")
        return
    print("NOT reproducible: the dvc.lock this runner computed differs from the committed one", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    print(runner(), file=sys.stderr)
    print(FIX, file=sys.stderr)
    sys.exit(1)
