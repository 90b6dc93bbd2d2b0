"""What the pipeline costs beyond its compute: `dvc repro -f` of the default pipeline in a fresh
copy of this tree (its own DVC cache and MLflow store), each stage's wall time beside its
compute, then a one-parameter `dvc exp run -S train.cnn.lr=...` and a `dvc repro` with nothing
changed, the same way.

A stage's wall time runs from DVC's "Running stage" line to the next (DVC's own bookkeeping
between stages counts against the stage before). Its compute is what the stage itself timed and
logged in the same run: the training passes and validation passes of every epoch (train), the
evaluation passes over every test set (evaluate); the other stages' work counts as overhead.

    .venv/bin/python bench/pipeline_overhead.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mnistflow.tools.reprocheck import copy_pipeline, user_env  # noqa: E402
GOALS = {"pipeline": 1.15, "experiment_s": 15.0, "unchanged_s": 2.0}

# What the stages log of their own passes: train, per epoch "<s>s (<n> img/s), validation <s>s";
# evaluate, per test set "<model> on <set>: ... (<s>s)".
EPOCH = re.compile(r" ([0-9.]+)s \([0-9]+ img/s\), validation ([0-9.]+)s")
EVALUATION = re.compile(r" on \S+: acc .* \(([0-9.]+)s\)$")


def copy_project(dest: Path) -> Path:
    """This tree's pipeline in a fresh git repo: nothing cached, an empty MLflow store."""
    copy_pipeline(ROOT, dest)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def timed_stages(cmd: list[str], cwd: Path) -> tuple[float, dict[str, dict[str, float]]]:
    """Run a DVC command; its wall time and, per stage, its wall time and logged compute."""
    start = time.perf_counter()
    stages: dict[str, dict[str, float]] = {}
    current = None
    proc = subprocess.Popen(cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        now = time.perf_counter()
        log.append(line)
        if found := re.match(r"Running stage '([^']+)'", line):
            current = stages.setdefault(found.group(1), {"start": now, "compute": 0.0})
        elif current is not None and (epoch := EPOCH.search(line)):
            current["compute"] += float(epoch.group(1)) + float(epoch.group(2))
        elif current is not None and (passes := EVALUATION.search(line.rstrip())):
            current["compute"] += float(passes.group(1))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(log[-40:])}")
    end = time.perf_counter()
    starts = [s["start"] for s in stages.values()] + [end]
    for (name, stage), stop in zip(stages.items(), starts[1:]):
        stage["wall"] = stop - stage.pop("start")
    return end - start, stages


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project")
        subprocess.run([*dvc, "repro", "-q", "preprocess"], cwd=project, env=user_env(), check=True)  # data in place
        wall, stages = timed_stages([*dvc, "repro", "-f"], project)
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m",
                        "outputs"], cwd=project, check=True)
        exp_wall, exp_stages = timed_stages([*dvc, "exp", "run", "-S", "train.cnn.lr=0.02"], project)
        start = time.perf_counter()
        unchanged = subprocess.run([*dvc, "repro"], cwd=project, env=user_env(), check=True, capture_output=True,
                                   text=True)
        unchanged_s = time.perf_counter() - start
        assert "Running stage" not in unchanged.stdout, unchanged.stdout

    rows = [{"stage": name, "wall_s": round(s["wall"], 1), "compute_s": round(s["compute"], 1),
             "overhead_s": round(s["wall"] - s["compute"], 1)} for name, s in stages.items()]
    compute = sum(s["compute"] for s in stages.values())
    exp_compute = sum(s["compute"] for s in exp_stages.values())
    result = {
        "date": date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(), "stages": rows,
        "pipeline": {"wall_s": round(wall, 1), "compute_s": round(compute, 1), "ratio": round(wall / compute, 3)},
        "experiment": {"wall_s": round(exp_wall, 1), "stages": list(exp_stages), "compute_s": round(exp_compute, 1),
                       "overhead_s": round(exp_wall - exp_compute, 1)},
        "unchanged_repro_s": round(unchanged_s, 2),
    }
    print(f"{result['cpu']}, {result['cores']} cores, {result['date']}\n")
    print("| stage | wall s | compute s | overhead s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']} | {r['compute_s']} | {r['overhead_s']} |")
    p, e = result["pipeline"], result["experiment"]
    met = {True: "met", False: "not met"}
    print(f"\n`dvc repro -f`: {p['wall_s']} s for {p['compute_s']} s of compute: {p['ratio']}x "
          f"(goal {GOALS['pipeline']}x: {met[p['ratio'] <= GOALS['pipeline']]})")
    print(f"`dvc exp run -S train.cnn.lr=0.02` ({', '.join(e['stages'])}): {e['wall_s']} s, {e['overhead_s']} s beyond "
          f"its training and evaluation passes (goal {GOALS['experiment_s']} s: {met[e['overhead_s'] <= GOALS['experiment_s']]})")
    print(f"`dvc repro` with nothing changed: {result['unchanged_repro_s']} s "
          f"(goal {GOALS['unchanged_s']} s: {met[result['unchanged_repro_s'] <= GOALS['unchanged_s']]})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
