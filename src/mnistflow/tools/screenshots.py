"""The docs' pictures of MLflow's UI, taken from the project's own store in headless Chromium:
the runs table and its charts as the project's view shows them, a registered model's page, and
its champion's training run on the System metrics tab.
The browser tests drive the UI with the same helpers.

    mnistflow screenshots [--out docs]      (after `make repro`; Chromium installed)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mnistflow.core.errors import MnistflowError
from mnistflow.cli import Parser
from mnistflow.tools.server import NO_JOB_RUNNER

STUDY_TABLE = Path("reports/study.json")  # the study the report page shows (mnistflow tune)

WIDTH, HEIGHT = 1600, 1000  # a laptop's browser window


@contextmanager
def browser() -> Iterator:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise MnistflowError("chromium is not installed (make test-tools installs it where it runs as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-background-networking",
                                                              "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def ui_server(store_uri: str) -> Iterator[str]:
    """`mlflow server` over a store on a free loopback port, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", store_uri, "--workers", "1"], env={**os.environ, **NO_JOB_RUNNER},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise MnistflowError(f"mlflow server did not come up on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def open_runs(page, url: str, timeout_ms: int = 60_000) -> None:
    """Open a runs-table link and wait for its cells; close the Assistant panel, which takes a
    third of the width (the browser keeps it closed afterwards)."""
    page.goto(url)
    page.locator("[role=gridcell]").or_(page.get_by_text("Headline metrics")).first.wait_for(timeout=timeout_ms)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    page.wait_for_timeout(1500)


def grid(page, timeout_ms: int = 60_000) -> list[dict[str, str]]:
    """The runs table's rows as {column id: text}, the pinned columns (run name) with the others
    (the grid draws only the columns in view). It waits for the rows: a loaded machine draws the
    table's frame first and its rows seconds later."""
    page.wait_for_function("""() => [...document.querySelectorAll('[role=gridcell][col-id="attributes.`Run Name`"]')]
        .some(c => c.innerText.trim())""", timeout=timeout_ms)
    return page.evaluate("""() => {
        const rows = {};
        for (const r of document.querySelectorAll('[role=row][row-index]')) {
            const row = rows[r.getAttribute('row-index')] ??= {};
            for (const c of r.querySelectorAll('[role=gridcell]'))
                row[c.getAttribute('col-id')] = c.innerText.trim().split('\\n').pop();
        }
        return Object.keys(rows).sort((a, b) => a - b).map(k => rows[k]);
    }""")


def run_names(page) -> list[str]:
    return [r.get("attributes.`Run Name`", "") for r in grid(page)]


def save(page, path: Path) -> Path:
    """A screenshot written whole or not at all (a killed run leaves the old picture)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    page.screenshot(path=tmp)
    os.replace(tmp, path)
    return path


def take(out: Path, dataset: str) -> list[Path]:
    """Screenshots of the store tracking_uri() names."""
    from mnistflow import tracking
    from mnistflow.tracking import ui

    exp = tracking.client().get_experiment_by_name(dataset)
    if exp is None:
        raise MnistflowError(f"no experiment {dataset!r} in {tracking.tracking_uri()}: run `make repro` first")
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with ui_server(tracking.tracking_uri()) as url, browser() as b:
        page = b.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, link in (("mlflow-runs.png", ui.runs_url(exp.experiment_id)),
                           ("mlflow-charts.png", ui.runs_url(exp.experiment_id, charts=True))):
            open_runs(page, link.replace(ui.ui_url(), url))
            shots.append(save(page, out / name))
        studies = sorted(k.removeprefix(ui.VIEW_PREFIX) for k in exp.tags if k.startswith(ui.VIEW_PREFIX + ui.STUDY_VIEW))
        if studies:  # the study that reports/study.json shows, else the last by name
            shown = ui.STUDY_VIEW + str((json.loads(STUDY_TABLE.read_text()) if STUDY_TABLE.exists() else {}).get("study"))
            open_runs(page, ui.runs_url(exp.experiment_id, shown if shown in studies else studies[-1]).replace(
                ui.ui_url(), url))
            shots.append(save(page, out / "mlflow-study.png"))
        model = f"{dataset}-cnn"
        page.goto(f"{url}/#/models/{model}?{ui.TRAINING_LAYOUT}")
        page.wait_for_selector("text=champion", timeout=60_000)  # the versions table, with the aliases
        page.wait_for_timeout(1000)
        shots.append(save(page, out / "mlflow-model.png"))
        sampled = next((r for r in tracking.client().search_runs(
            [exp.experiment_id], "params.model = 'cnn'", order_by=["attributes.start_time DESC"])
            if "system/cpu_utilization_percentage" in r.data.metrics), None)  # the newest training run of cnn
        if sampled:
            open_system_metrics(page, ui.run_url(exp.experiment_id, sampled.info.run_id).replace(ui.ui_url(), url))
            shots.append(save(page, out / "mlflow-system-metrics.png"))
    return shots


def open_system_metrics(page, run_link: str, timeout_ms: int = 60_000) -> None:
    """A run's page on its System metrics tab, its charts drawn."""
    page.goto(run_link)
    page.get_by_role("tab", name="System metrics").click(timeout=timeout_ms)
    close = page.get_by_role("button", name="Close")  # the Assistant panel, as open_runs does
    if close.count():
        close.first.click()
    page.get_by_text("cpu_utilization_percentage").first.wait_for(timeout=timeout_ms)
    page.wait_for_timeout(2000)


def main(argv: list[str] | None = None, prog: str = "mnistflow screenshots") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    from mnistflow.core.config import load_config

    for path in take(args.out, load_config().data.dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    from mnistflow.core.errors import run_stage

    run_stage(main)
