"""Each DVC stage's start-up: the seconds a fresh Python takes to run the stage script's imports
(at its top and in its main, in order), for this tree against a baseline revision (checked out
into a temporary git worktree), alternating, median of --repeats.

    .venv/bin/python bench/stage_startup.py [--baseline REV] [--repeats 3]
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(script: Path) -> str:
    """The script's import statements, at its top and in its functions, in order: what the stage
    loads before it does any work."""
    nodes = [n for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(ast.unparse(n) for n in sorted(nodes, key=lambda n: n.lineno))


def startup(tree: Path, code: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], cwd=ROOT, check=True)
        try:
            print(f"| stage | {args.baseline} s | now s | baseline / now |\n|---|---|---|---|")
            for script in sorted((ROOT / "stages").glob("*.py")):
                times = {"base": [], "now": []}
                for _ in range(args.repeats):  # alternating: drift hits both alike
                    times["base"].append(startup(base, imports(base / "stages" / script.name)))
                    times["now"].append(startup(ROOT, imports(script)))
                b, n = statistics.median(times["base"]), statistics.median(times["now"])
                print(f"| {script.stem} | {b:.2f} | {n:.2f} | {b / n:.2f}x |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
