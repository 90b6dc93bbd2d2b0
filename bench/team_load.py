"""Load on the tracking store: EXPS experiments queued and run with `dvc queue start -j JOBS`
in a clone of this repo's HEAD on tiny generated data, against the team server (PostgreSQL,
basic auth: `python -m mnistflow.tools.server`) and against the sqlite store; then every
experiment's MLflow run is checked (finished, its params, the full metric history, the logged
model, the evaluation; none failed, none twice). Meanwhile a probe client logs one epoch's
metrics with log_batch every 0.1 s, as a train stage does: its latencies are the store's
p50/p95 under that load.

    make bench-team       # or: PYTHONPATH=src python bench/team_load.py [--exps 8] [--jobs 4]
                          #     [--stores server,sqlite] [--url URL] [--json FILE]

With --url, the server at URL is used (password: MLFLOW_TRACKING_PASSWORD) instead of one
started for the run. Exits 1 when a run is missing or incomplete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mnistflow.tools import compare, server
from mnistflow import tracking  # noqa: E402
from mnistflow.tools.reprocheck import shrink, user_env  # noqa: E402
from mnistflow.data.synthetic import write_idx  # noqa: E402

MODEL, EPOCHS, DATASET = "mlp", 2, "mnist"
EPOCH_KEYS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"]


class Probe(threading.Thread):
    """log_batch of one epoch's seven metrics every `every` seconds; latencies in seconds."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.every, self.latencies, self.errors, self.done = every, [], 0, threading.Event()
        from mlflow import MlflowClient
        self.client = MlflowClient()  # the URI and credentials from the environment, as a stage's
        exp = self.client.get_experiment_by_name("load-probe") or self.client.get_experiment(
            self.client.create_experiment("load-probe"))
        self.run_id = self.client.create_run(exp.experiment_id, run_name="probe").info.run_id

    def run(self) -> None:
        from mlflow.entities import Metric
        step = 0
        while not self.done.wait(self.every):
            step += 1
            metrics = [Metric(k, float(step), int(time.time() * 1000), step) for k in EPOCH_KEYS]
            start = time.perf_counter()
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
                self.latencies.append(time.perf_counter() - start)
            except Exception:  # counted: a store that drops a write under load is what we look for
                self.errors += 1

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.client.set_terminated(self.run_id)


def check(names: dict[str, float], failed: list[str]) -> tuple[int, list[str]]:
    """How many experiments landed complete in MLflow, and what is wrong with the others."""
    client, problems, complete = tracking.client(), [f"{n}: the experiment failed" for n in failed], 0
    for name, lr in names.items():
        if name in failed:
            continue
        md5 = compare.exp_weights_md5(name, MODEL)
        runs = client.search_runs([tracking.experiment_id(DATASET)],
                                  filter_string=f"tags.model_md5 = '{md5}' and params.model = '{MODEL}'")
        if len(runs) != 1:
            problems.append(f"{name}: {len(runs)} runs hold its weights (md5 {md5})")
            continue
        run = runs[0]
        logged = client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        wrong = [what for what, ok in (
            ("status", run.info.status == "FINISHED"), ("lr", float(run.data.params.get("lr", "nan")) == lr),
            ("history", all(len(tracking.metric_history(run.info.run_id, k)) == EPOCHS for k in EPOCH_KEYS)),
            ("evaluation", "test_acc" in run.data.metrics), ("model", len(logged) == 1)) if not ok]
        if wrong:
            problems.append(f"{name}: run {run.info.run_id} has a wrong or missing {', '.join(wrong)}")
        else:
            complete += 1
    failed_runs = client.search_runs([tracking.experiment_id(DATASET)], filter_string="attributes.status = 'FAILED'")
    problems += [f"run {r.info.run_id} ({r.info.run_name}) FAILED" for r in failed_runs]
    return complete, problems


def load(store: str, clone: Path, mirror: Path, exps: int, jobs: int, env: dict) -> dict:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    params = shrink(yaml.safe_load((clone / "params.yaml").read_text()), mirror, [MODEL], epochs=EPOCHS)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(clone)
    os.environ.clear()
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}", **env})  # sqlite: the default
    subprocess.run(["git", "-c", "user.name=load", "-c", "user.email=load@localhost", "commit", "-q", "-am", "tiny"],
                   check=True)
    compare.dvc("repro")  # the baseline: the queued experiments take its data from the cache
    names = {f"load-{i + 1}": round(0.0005 * (i + 1), 6) for i in range(exps)}
    idle = Probe()  # the same calls with nothing else running, for scale
    idle.start()
    time.sleep(3)
    idle.stop()
    probe = Probe()
    probe.start()
    start = time.monotonic()
    failed = compare.run_queue({n: ["-S", f"train.{MODEL}.lr={lr}"] for n, lr in names.items()}, jobs)
    seconds = time.monotonic() - start
    probe.stop()
    complete, problems = check(names, failed)
    twentieths = statistics.quantiles(probe.latencies, n=20)  # [9]: the median, [18]: the 95th percentile
    p50, p95 = twentieths[9] * 1000, twentieths[18] * 1000
    return {"store": store, "experiments": exps, "jobs": jobs, "complete": complete, "problems": problems,
            "seconds": round(seconds, 1), "log_batch_calls": len(probe.latencies), "log_batch_errors": probe.errors,
            "log_batch_p50_ms": round(p50, 1), "log_batch_p95_ms": round(p95, 1),
            "idle_log_batch_p50_ms": round(statistics.median(idle.latencies) * 1000, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exps", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--stores", default="server,sqlite",
                        help="of server (the team server), server-uncached (its auth cache off), sqlite")
    parser.add_argument("--url", help="a running team server (else one is started and stopped)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    base = {**user_env(), "PYTHONPATH": str(ROOT / "src")}
    results = []
    # Not a 700 temp folder: PostgreSQL runs as an unprivileged user who must reach its own.
    home = Path(tempfile.mkdtemp(prefix="mnistflow-load-"))
    home.chmod(0o755)
    mirror = write_idx(home / "mirror")
    for store in args.stores.split(","):
        env = dict(base)
        started = None
        if store.startswith("server"):
            if args.url:
                url, password = args.url, os.environ["MLFLOW_TRACKING_PASSWORD"]
            else:
                started = home / f".{store}"
                if store == "server-uncached":  # MLflow's default: the password's hash checked per request
                    os.environ["MNISTFLOW_AUTH_CACHE_SECONDS"] = "0"
                url, password = server.start(started, "127.0.0.1", free_port()), server.admin_password(started)
                os.environ.pop("MNISTFLOW_AUTH_CACHE_SECONDS", None)
            env.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME=server.ADMIN, MLFLOW_TRACKING_PASSWORD=password)
        saved = dict(os.environ)
        try:
            results.append(load(store, home / store, mirror, args.exps, args.jobs, env))
        finally:
            os.chdir(ROOT)
            os.environ.clear()
            os.environ.update(saved)
            if started:
                server.stop(started)
    print(f"{args.exps} experiments ({MODEL}, {EPOCHS} epochs on tiny data), `dvc queue start -j {args.jobs}`:")
    print("| store | runs complete | errors | queue wall time | log_batch p50 | log_batch p95 | probe calls "
          "| p50 idle |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['store']} | {r['complete']}/{r['experiments']} | {len(r['problems']) + r['log_batch_errors']} | "
              f"{r['seconds']:.0f} s | {r['log_batch_p50_ms']:.1f} ms | {r['log_batch_p95_ms']:.1f} ms | "
              f"{r['log_batch_calls']} | {r['idle_log_batch_p50_ms']:.1f} ms |")
    for r in results:
        for problem in r["problems"]:
            print(f"{r['store']}: {problem}")
    shutil.rmtree(home, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if all(r["complete"] == r["experiments"] and not r["problems"] for r in results) else 1)


if __name__ == "__main__":
    main()
