"""The CI reproducibility check: the whole pipeline twice, each from an empty DVC cache in a
fresh clone, on tiny generated data; every output hash in the two dvc.lock files and every
metric must agree, and each run must leave `dvc status` and `git status` clean. The second run
differs in what portable numerics must not depend on: it runs on one CPU core, in an environment
that asks for other kernels and thread counts (`OTHER_MACHINE`). `--target STAGE` checks that
stage and those it depends on alone (`dvc repro STAGE`): a suspect stage, in seconds.

    mnistflow repro-check [--repo .] [--models mlp,cnn] [--target STAGE] [--keep DIR]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mnistflow.core.errors import MnistflowError, run_stage
from mnistflow.data.synthetic import write_idx
from mnistflow.cli import Parser


def shrink(params: dict, mirror: Path, models: list[str] | None = None, epochs: int = 2) -> dict:
    """The project's params on tiny data: every stage runs, in seconds."""
    params["data"].update(dataset="mnist", mirror=str(mirror), val_size=100)
    if models:
        params["train"]["models"] = models
    for model in params["train"]["models"]:
        params["train"][model].update(epochs=epochs, batch_size=64)
    return params


# What a clean clone holds that the pipeline needs.
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".dvc/plots",
                 "reports/optimizers.json", "reports/study.json", "stages", "src"]


def copy_pipeline(root: Path, dest: Path) -> Path:
    """The pipeline of the tree `root`, committed or not, in `dest`, without outputs, caches or
    store: what the tests and benchmarks run."""
    import shutil

    for name in PROJECT_FILES:
        src = Path(root) / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


# What another machine's shell might hold: numerics pins must win over it.
OTHER_MACHINE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "default",
                 "ONEDNN_MAX_CPU_ISA": "SSE41"}


def user_env() -> dict:
    """The environment a user's shell would have: this venv first on PATH, no MLflow or DVC
    overrides inherited from whatever runs us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def pipeline_run(repo: Path, clone: Path, mirror: Path, models: list[str] | None,
                 other_machine: bool = False, target: str | None = None) -> tuple[dict, dict]:
    """Clone, shrink params, commit, `dvc repro [target]`; return the dvc.lock and the metrics
    (none with a target: the stages that write them may not run).
    `other_machine`: on one CPU core, in the OTHER_MACHINE environment."""
    env = {**user_env(), **(OTHER_MACHINE if other_machine else {})}
    one_core = min(os.sched_getaffinity(0))

    def sh(*args: str) -> str:
        proc = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True,
                              preexec_fn=(lambda: os.sched_setaffinity(0, {one_core})) if other_machine else None)
        if proc.returncode != 0:
            raise MnistflowError(f"{' '.join(args)} failed in {clone}:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    params = shrink(yaml.safe_load((clone / "params.yaml").read_text()), mirror, models)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "-c", "user.name=repro-check", "-c", "user.email=repro-check@localhost",
       "commit", "-q", "-am", "repro-check: tiny config")
    (clone / "dvc.lock").unlink(missing_ok=True)  # the committed one is of other data: hold only what runs here
    dvc = [sys.executable, "-m", "dvc"]
    sh(*dvc, "repro", *([target] if target else []))
    problems = []
    with_deps = [target, "--with-deps"] if target else []
    status = json.loads(sh(*dvc, "status", "--json", *with_deps))  # an unchanged workspace is up to date
    if status:
        problems.append(f"dvc status after dvc repro is not clean: {status}")
    # dvc.lock is meant to be committed; anything else showing up escaped .gitignore.
    leaked = [line for line in sh("git", "status", "--porcelain").splitlines() if not line.endswith("dvc.lock")]
    if leaked:
        problems.append("files generated outside .gitignore:\n  " + "\n  ".join(leaked))
    if problems:
        raise MnistflowError(f"{clone}: " + "\n".join(problems))
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    return lock, {} if target else json.loads(sh(*dvc, "metrics", "show", "--json"))


def output_hashes(lock: dict) -> dict[str, str]:
    return {f"{stage}: {out['path']}": out["md5"]
            for stage, entry in lock["stages"].items() for out in entry.get("outs", [])}


def compare(first: tuple[dict, dict], second: tuple[dict, dict]) -> list[str]:
    """Every difference between two runs, as lines to print."""
    (lock_a, metrics_a), (lock_b, metrics_b) = first, second
    a, b = output_hashes(lock_a), output_hashes(lock_b)
    diffs = [f"{key}: {a.get(key)} != {b.get(key)}" for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]
    if metrics_a != metrics_b:
        diffs.append(f"metrics differ:\n  {json.dumps(metrics_a)}\n  {json.dumps(metrics_b)}")
    return diffs


def check(repo: Path, workdir: Path, models: list[str] | None = None, target: str | None = None) -> int:
    mirror = write_idx(workdir / "mirror")
    runs = [pipeline_run(repo, workdir / name, mirror, models, other_machine=name == "second", target=target)
            for name in ("first", "second")]
    diffs = compare(*runs)
    if diffs:
        print("NOT reproducible: outputs differ between two clean runs:\n  " + "\n  ".join(diffs))
        return 1
    print(f"reproducible: {len(output_hashes(runs[0][0]))} outputs{'' if target else ' and every metric'} identical "
          f"across two clean runs, the second on one CPU core with {' '.join(f'{k}={v}' for k, v in OTHER_MACHINE.items())}; "
          "dvc status and git status clean after each")
    return 0


def main(argv: list[str] | None = None, prog: str = "mnistflow repro-check") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repo to check (its HEAD)")
    parser.add_argument("--models", help="comma-separated models instead of train.models")
    parser.add_argument("--target", metavar="STAGE", help="this stage and those it depends on alone (dvc repro STAGE)")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it")
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else None
    repo = args.repo.resolve()
    if subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout:
        print("note: uncommitted changes are not checked (the check clones HEAD)", file=sys.stderr)
    if args.keep:
        args.keep.mkdir(parents=True)
        code = check(repo, args.keep.resolve(), models, args.target)
    else:
        with tempfile.TemporaryDirectory(prefix="repro-check-") as tmp:
            code = check(repo, Path(tmp), models, args.target)
    sys.exit(code)


if __name__ == "__main__":
    run_stage(main)
