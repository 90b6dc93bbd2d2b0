"""The tutorials' optimizer comparison: one model trained with each optimizer on the same seed,
data and settings, as queued DVC experiments (one MLflow run each). Their per-epoch validation
curves and test accuracy go to reports/optimizers.json (in git), which the visualize stage draws
as reports/figures/optimizers.png on the report page.

    mnistflow compare-optimizers [--model mlp] [--jobs 2]

Each optimizer runs at PyTorch's default learning rate for it (SGD's and RMSprop's momentum and
everything else as params.yaml sets them): one rate for all would favour one of them.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

from mnistflow import tracking
from mnistflow.core.config import ModelConfig, load_config
from mnistflow.core.errors import MnistflowError, run_stage
from mnistflow.core.io import write_bytes
from mnistflow.models import model_names
from mnistflow.tools.exps import exp_show
from mnistflow.cli import Parser

RESULT = Path("reports/optimizers.json")
OPTIMIZER_NAMES = typing.get_args(ModelConfig.model_fields["optimizer"].annotation)  # what params.yaml takes
CURVES = ["val_loss", "val_acc"]


def default_lr(optimizer: str) -> float:
    from mnistflow.train.optim import OPTIMIZERS  # torch: not for `--help`

    return inspect.signature(OPTIMIZERS[optimizer]).parameters["lr"].default


def exp_name(model: str, optimizer: str) -> str:
    return f"{model}-{optimizer}"


def dvc(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        raise MnistflowError(f"dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}".rstrip())
    return proc


def run_experiments(model: str, jobs: int, timeout: float = 6 * 3600) -> None:
    """Queue one DVC experiment per optimizer (replacing one of the same name), run the queue."""
    failed = run_queue({exp_name(model, o): ["-S", f"train.models=[{model}]", "-S", f"train.{model}.optimizer={o}",
                                             "-S", f"train.{model}.lr={default_lr(o)}"] for o in OPTIMIZER_NAMES},
                       jobs, timeout, model_stages(model))
    if failed:
        raise MnistflowError(f"experiments failed: {', '.join(failed)} (`dvc queue logs <name>` says why)")


def model_stages(model: str) -> tuple[str, ...]:
    """What an experiment on one model runs: its training and evaluation (and what they depend
    on), not the report page. Drawn once from the chosen result (`dvc repro`), the page is not
    redrawn by each experiment of a batch: about 10 s each."""
    return f"train@{model}", f"evaluate@{model}"


def run_queue(experiments: dict[str, list[str]], jobs: int, timeout: float = 6 * 3600,
              targets: tuple[str, ...] = ()) -> list[str]:
    """Queue each named experiment with its `dvc exp run` arguments and stages to run (all by
    default), replacing one of the same name; run the queue on `jobs` workers, wait for it to
    drain; return the names that failed."""
    for name, args in experiments.items():
        dvc("exp", "remove", name, check=False)  # run again, an experiment replaces the old one
        dvc("exp", "run", "--queue", "-n", name, *args, *targets)
    print(f"queued {len(experiments)} experiment{'' if len(experiments) == 1 else 's'} on {jobs} worker(s); "
          "`dvc queue status` shows them", flush=True)
    return drain(experiments, jobs, timeout)


def workers_env(jobs: int) -> dict:
    """What queue workers that share the cores add to their environment. OpenMP threads that spin
    while they wait take the CPU the other workers' training needs (two at once 2x slower on 2
    cores); waiting passively costs a lone training 8 to 23%: so with several workers only, and
    never over the user's own choice (bench/shared_cpu.py). It changes no result."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} if jobs > 1 and "OMP_WAIT_POLICY" not in os.environ else {}


def drain(names, jobs: int, timeout: float = 6 * 3600) -> list[str]:
    """Run the queue on `jobs` workers until the named experiments are done; the names that failed."""
    dvc("queue", "start", "-j", str(jobs), env=workers_env(jobs))  # the workers pass it to their stages
    deadline = time.monotonic() + timeout
    try:
        while True:
            states = queue_states(names)
            if len(states) == len(names) and not any(s in ("queued", "running") for s in states.values()):
                break
            if time.monotonic() > deadline:
                raise MnistflowError(f"the queue did not drain in {timeout:.0f} s: {states}")
            time.sleep(3)
    finally:  # never leave workers behind, on an error, Ctrl-C or SIGTERM either
        for _ in range(3):  # DVC may still hold its lock from an interrupted `exp show`: ask again
            if dvc("queue", "stop", "--kill", check=False).returncode == 0:
                break
            time.sleep(2)
        else:
            print("could not stop DVC's queue workers: run `dvc queue stop --kill`", file=sys.stderr)
    return [name for name, state in states.items() if state == "failed"]


def queue_states(names) -> dict[str, str | None]:
    """Each named experiment's state in DVC's queue (queued, running, success, failed), from
    `dvc exp show --json`; an experiment DVC does not show yet is left out."""
    return {e["name"]: e["state"] for e in exp_show() if e["name"] in names and "state" in e}


def exp_weights_md5(name: str, model: str) -> str:
    """The md5 of the weights that DVC experiment `name` (of the current commit) produced, from
    `dvc exp show --json`: how its MLflow run is found, also where DVC restored the outputs from
    its run-cache instead of training (an experiment equal to one already run)."""
    entry = next((e for e in exp_show() if e["name"] == name), None)
    outs = ((entry or {}).get("data") or {}).get("outs") or {}
    weights = outs.get(f"models/{model}.pt")
    if weights is None:
        raise MnistflowError(f"no DVC experiment {name!r} of this commit with models/{model}.pt (`dvc exp show`)")
    return weights["hash"]


def gather(model: str) -> dict:
    """What each optimizer's run recorded: settings, validation curves, test accuracy."""
    cfg = load_config("params.yaml", model_names())
    result = {"dataset": cfg.data.dataset, "model": model, "seed": cfg.seed, "optimizers": {}}
    for optimizer in OPTIMIZER_NAMES:
        name = exp_name(model, optimizer)
        md5 = exp_weights_md5(name, model)
        run = tracking.run_of_weights(cfg.data.dataset, md5)
        if run is None or "evaluation_only" in run.data.tags:
            why = (f"no MLflow run of {model} holds" if run is None else "only an evaluation-only run (no params or "
                   "curves: the weights came from DVC's cache, not from training against this store) holds")
            raise MnistflowError(f"{why} the weights of DVC experiment {name!r} (md5 {md5}) in {tracking.tracking_uri()}")
        result["optimizers"][optimizer] = {
            "dvc_exp": name, "model_md5": md5, "lr": float(run.data.params["lr"]),
            "test_acc": run.data.metrics.get("test_acc"),
            **{key: tracking.metric_history(run.info.run_id, key) for key in CURVES}}
    return result


def main(argv: list[str] | None = None, prog: str = "mnistflow compare-optimizers") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=model_names())
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (experiments at a time)")
    args = parser.parse_args(argv)
    run_experiments(args.model, args.jobs)
    result = gather(args.model)
    write_bytes(RESULT, (json.dumps(result, indent=1) + "\n").encode())
    print(table(result))
    print(f"wrote {RESULT}; `dvc repro` draws it on the report page")


def table(result: dict) -> str:
    """The comparison as a Markdown table (the README's)."""
    rows = [f"| {o} | {r['lr']:g} | {r['val_loss'][-1]:.4f} | {r['val_acc'][-1]:.4f} | "
            f"{'-' if r['test_acc'] is None else format(r['test_acc'], '.4f')} |"
            for o, r in result["optimizers"].items()]
    return "\n".join([f"{result['model']} on {result['dataset']}, seed {result['seed']}:",
                      "| optimizer | lr | val loss | val acc | test acc |", "|---|---|---|---|---|", *rows])


if __name__ == "__main__":
    run_stage(main)
