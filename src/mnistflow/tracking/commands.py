"""The MLflow commands a user runs: `mnistflow ui` (the UI over the repo's store, after printing
the pages to open), `mnistflow links` (only the pages), `mnistflow serve` (a model's champion as
a REST endpoint), `mnistflow lineage` and `mnistflow restore` (what made a run; get it back).
Each answers a mistake in one line."""
from __future__ import annotations

import os
import sys

from pathlib import Path

from mnistflow.cli import Parser
from mnistflow.core.errors import MnistflowError
from mnistflow.core.io import repo_root
from mnistflow.tools.server import NO_JOB_RUNNER
from mnistflow.tracking import lineage, store, ui


def print_links(names: list[str] | None = None) -> None:
    """Repoint a moved store, give every experiment its layout and views, print the page of
    each, and point the report page's links at this store and UI (reports/mlflow-links.js)."""
    client = store.client()
    names = names or [e.name for e in client.search_experiments() if e.name != "Default"]
    for name in sorted(names, key=lambda n: (n.endswith("-reports"), n)):  # the runs tables first
        if client.get_experiment_by_name(name) is None:
            raise MnistflowError(f"no experiment {name!r} in {store.tracking_uri()}")
        exp_id = ui.install(client, name)  # also in a store from before them
        if name.endswith("-reports"):
            print(f"{name}: {ui.runs_url(exp_id, ui.REPORTS)}\n  the report runs: each drawing of the figures "
                  "and the report page, and the models it showed")
        else:
            print(f"{name}: {ui.runs_url(exp_id)}\n  the runs table: each model's run, its test accuracy, "
                  "what varied and what made it, newest first")
            print(f"{name} charts: {ui.runs_url(exp_id, charts=True)}\n  the same runs as charts: test accuracy "
                  "per run, and the settings that varied against it")
            tags = client.get_experiment_by_name(name).tags
            for key in sorted(k.removeprefix(ui.VIEW_PREFIX) for k in tags if k.startswith(ui.VIEW_PREFIX + ui.STUDY_VIEW)):
                print(f"{name} study {key.removeprefix(ui.STUDY_VIEW)}: {ui.runs_url(exp_id, key)}\n  a hyperparameter "
                      "study (mnistflow tune): its run and its trials' training runs, best validation accuracy first")
    if (repo_root() / "reports" / "index.html").exists():
        ui.write_links(client, repo_root() / "reports")
    print(ui.HOME_PAGE_HINT, flush=True)


def links(argv: list[str], prog: str) -> None:
    parser = Parser(prog=prog, description="Repoint a moved store and print the pages to open.")
    parser.add_argument("experiments", nargs="*", help="experiment names (default: every one)")
    print_links(parser.parse_args(argv).experiments)


def serve_ui(argv: list[str], prog: str) -> None:
    parser = Parser(prog=prog, description="The MLflow UI over the repo's store.")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it: put authentication in front")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    uri = store.tracking_uri()
    if not uri.startswith("sqlite:///"):
        raise MnistflowError(f"MLFLOW_TRACKING_URI names a server ({uri}): open it there instead")
    os.environ["MLFLOW_UI_URL"] = f"http://{args.host}:{args.port}"  # the links name where it serves
    print_links()
    os.environ.update(NO_JOB_RUNNER)
    # One worker: one user's browser (MLflow's default, 4, costs 8 s more CPU to start: bench/ui_start.py)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port",
                              str(args.port), "--backend-store-uri", uri, "--workers", "1"])


def serve(argv: list[str], prog: str) -> None:
    from mnistflow.core.config import load_config
    from mnistflow.tracking.registry import CHAMPION, model_name

    parser = Parser(prog=prog, description="A model's champion as a REST endpoint: POST raw pixels to /invocations.")
    parser.add_argument("model", nargs="?", default="cnn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    store.client()  # a moved store is repointed, a server checked, before MLflow's own command
    uri = f"models:/{model_name(load_config().data.dataset, args.model)}@{CHAMPION}"
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri()
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local",
                              "-m", uri, "--host", args.host, "--port", str(args.port)])


def _one_line(command: str, run_id: str, action) -> None:
    try:
        action()
    except (OSError, *store.errors()) as exc:  # one line for the user, not a traceback
        raise MnistflowError(f"{command} {run_id}: {str(exc).splitlines()[0]}") from None


def show_lineage(argv: list[str], prog: str) -> None:
    parser = Parser(prog=prog, description="Print what made an MLflow run.")
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    _one_line("lineage", args.run_id, lambda: print(lineage.describe(args.run_id)))


def restore(argv: list[str], prog: str) -> None:
    parser = Parser(prog=prog, description="Restore a run's code, params, data and model into a new folder.")
    parser.add_argument("run_id")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    _one_line("restore", args.run_id, lambda: print(f"restored into {lineage.restore(args.run_id, args.dest)}"))
