"""What the pipeline costs beyond its compute: `dvc repro -f` of the default pipeline in a fresh
copy of this tree (its own DVC cache and MLflow store), each stage's wall time beside its
compute, then a one-parameter `dvc exp run -S train.cnn.lr=...` and a `dvc repro` with nothing
changed, the same way.

A stage's wall time runs from DVC's "Running stage" line to the next (DVC's own bookkeeping
between stages counts against the stage before). Its compute, the baseline, is measured in the
same run: the same training (the project's `fit`, every epoch with its validation pass) and
evaluation passes (every test set), in one Python process that has already paid its imports.

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

# The compute alone, in one process: the splits as the stages load them, then per model the
# project's fit (with its validation passes) and the evaluation passes over every test set.
COMPUTE = r"""
import json, sys, time
from pathlib import Path
from mnistflow.core.config import load_config
from mnistflow.core.numerics import pin
cfg = load_config()
pin(cfg.numerics.mode, cfg.numerics.threads)
import torch
from mnistflow.core.device import configure, fast_layout, select_device, set_determinism
from mnistflow.data.splits import load_split, read_classes, read_stats
from mnistflow.models import create_model
from mnistflow.models.inference import Normalizer, logits_in_batches
from mnistflow.train.training import fit
device = select_device(cfg.device)
configure(cfg.numerics.mode, cfg.numerics.threads)
data, shape = Path("data/processed"), cfg.data.image_shape
classes = read_classes(data)
norm = Normalizer(**read_stats(data))
train, val = (load_split(data / f"{s}.pt", shape, len(classes)).to(device) for s in ("train", "val"))
sets = [data / "test.pt", *(data / "variants" / f"{v}.pt" for v in cfg.preprocess.variants)]
tests = [load_split(p, shape, len(classes)).to(device) for p in sets]
out = {}
for name in cfg.train.models:
    set_determinism(cfg.seed, cfg.train.deterministic, device)
    model = fast_layout(create_model(name, shape, len(classes))).to(device)
    start = time.perf_counter()
    fit(model, train, val, cfg.model(name), norm, seed=cfg.seed, name=name)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    for split in tests:
        for logits, labels in logits_in_batches(model, split, norm):
            logits.softmax(1)
    out[name] = {"train": trained, "evaluate": time.perf_counter() - start}
print(json.dumps(out))
"""


def copy_project(dest: Path) -> Path:
    """This tree's pipeline in a fresh git repo: nothing cached, an empty MLflow store."""
    copy_pipeline(ROOT, dest)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def timed_stages(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run a DVC command; its wall time and each stage's, from the "Running stage" lines."""
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen(cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        found = re.match(r"Running stage '([^']+)'", line)
        if found:
            marks.append((found.group(1), time.perf_counter()))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(log[-40:])}")
    end = time.perf_counter()
    stages = {name: (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (name, t) in enumerate(marks)}
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
        compute = json.loads(subprocess.run([sys.executable, "-c", COMPUTE], cwd=project, env=user_env(), check=True,
                                            capture_output=True, text=True).stdout)
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m",
                        "outputs"], cwd=project, check=True)
        exp_wall, exp_stages = timed_stages([*dvc, "exp", "run", "-S", "train.cnn.lr=0.02"], project)
        # The lr experiment's cnn trains as long as the default's: the same epochs and batches.
        exp_compute = compute["cnn"]["train"] + compute["cnn"]["evaluate"]
        start = time.perf_counter()
        unchanged = subprocess.run([*dvc, "repro"], cwd=project, env=user_env(), check=True, capture_output=True, text=True)
        unchanged_s = time.perf_counter() - start
        assert "Running stage" not in unchanged.stdout, unchanged.stdout

    rows = []
    for name, seconds in stages.items():
        kind, _, model = name.partition("@")
        work = compute[model][kind] if model else 0.0
        rows.append({"stage": name, "wall_s": round(seconds, 1), "compute_s": round(work, 1),
                     "overhead_s": round(seconds - work, 1)})
    total_compute = sum(r["compute_s"] for r in rows)
    result = {
        "date": date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(), "stages": rows,
        "pipeline": {"wall_s": round(wall, 1), "compute_s": round(total_compute, 1),
                     "ratio": round(wall / total_compute, 3)},
        "experiment": {"wall_s": round(exp_wall, 1), "stages": list(exp_stages), "cnn_compute_s": round(exp_compute, 1),
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
          f"cnn's training and evaluation (goal {GOALS['experiment_s']} s: {met[e['overhead_s'] <= GOALS['experiment_s']]})")
    print(f"`dvc repro` with nothing changed: {result['unchanged_repro_s']} s "
          f"(goal {GOALS['unchanged_s']} s: {met[result['unchanged_repro_s'] <= GOALS['unchanged_s']]})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
