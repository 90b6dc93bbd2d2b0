"""What starting `mlflow server` costs over a sqlite store, as `make ui` starts it: seconds until
/health answers, and CPU seconds of its whole process tree by 10 s after that; MLflow's defaults
(4 workers, its job runner on) against its job runner off (`tools.server.NO_JOB_RUNNER`, as every
server we start) with 4 and with 1 worker (`mnistflow ui`). Alternating, median of 3.

    .venv/bin/python bench/ui_start.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mnistflow.tools.server import NO_JOB_RUNNER  # noqa: E402

SETTINGS = {"MLflow's defaults": ({}, 4), "job runner off, 4 workers": (NO_JOB_RUNNER, 4),
            "job runner off, 1 worker": (NO_JOB_RUNNER, 1)}


def start(store: str, env: dict, workers: int) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", store, "--workers", str(workers)],
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        up = time.monotonic() - began
        time.sleep(10)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        # the children's own CPU and that of children they already reaped
        cpu = sum(sum(p.cpu_times()[:4]) for p in tree)
        return up, cpu
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        store = f"sqlite:///{home}/mlflow.db"
        from mlflow import MlflowClient

        MlflowClient(store).search_experiments()  # the schema made once, as a project's store has it
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):
            for name, (env, workers) in SETTINGS.items():
                results[name].append(start(store, env, workers))
    from pipeline_overhead import cpu_name  # beside this script

    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; `mlflow server` over a sqlite store, median of {args.repeats}")
    print("| server | /health answers after | CPU by 10 s later | CPU vs MLflow's defaults |")
    print("|---|---|---|---|")
    base = statistics.median(c for _, c in results["MLflow's defaults"])
    for name, runs in results.items():
        up, cpu_s = statistics.median(u for u, _ in runs), statistics.median(c for _, c in runs)
        print(f"| {name} | {up:.1f} s | {cpu_s:.1f} s | {cpu_s / base:.2f}x |")


if __name__ == "__main__":
    main()
