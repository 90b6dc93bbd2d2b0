"""What a user sees of MLflow: the UI that `make ui` serves over the project's own store, in
headless Chromium, and a champion model that `make serve` answers over HTTP.

Screenshots go to a temporary folder, or to $SCREENSHOTS (docs/ for the README's)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import add_make, free_port, make_project, pipeline_env, run
from mnistflow.tracking import ui_url

pytestmark = pytest.mark.e2e
MODELS = ["mlp", "cnn", "lenet"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_mirror):
    project = make_project(tmp_path_factory.mktemp("ui"), tiny_mirror, mlp={"epochs": 2})
    add_make(project)  # `make ui` and `make serve` as a user runs them
    run([sys.executable, "-m", "dvc", "repro"], project, pipeline_env())
    return project


@contextmanager
def make_target(project: Path, target: str, url: str, **variables):
    """`make TARGET` in the background until `url` answers; stopped with its process group."""
    log = project / f".{target}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", target, *(f"{k}={v}" for k, v in variables.items())], cwd=project,
                                env=pipeline_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"make {target} did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_make_serve_answers_raw_test_images_with_class_names(project):
    port = free_port()
    with make_target(project, "serve", f"http://127.0.0.1:{port}/ping", MODEL="cnn", SERVE_PORT=port):
        test = torch.load(project / "data/processed/test.pt", weights_only=True)
        images, labels = test["images"][:20], test["labels"][:20]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    assert len(answer) == 20
    classes = [str(d) for d in range(10)]  # mnist's class names
    for row in answer:
        assert row["class"] in classes and set(row["probabilities"]) == set(classes)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["probability"] == max(row["probabilities"].values())
    # The same classes as the evaluate stage predicted for these images.
    rows = (project / "reports/eval/cnn/confusion_test.csv").read_text().splitlines()[1:21]
    assert [row["class"] for row in answer] == [r.split(",")[1] for r in rows]
    assert [r.split(",")[0] for r in rows] == [classes[i] for i in labels]


@pytest.fixture(scope="module")
def ui(project):
    port = free_port()
    with make_target(project, "ui", f"http://127.0.0.1:{port}/health", UI_PORT=port) as log:
        yield f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs it where it runs as root with apt-get)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return Path(os.environ.get("SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))


def experiment_page_url(log: Path) -> str:
    """The page `make ui` tells the user to open for the experiment."""
    (line,) = [line for line in log.read_text().splitlines() if line.startswith("mnist: ")]
    return line.removeprefix("mnist: ")


def grid_rows(page) -> list[dict]:
    """The runs table's rows as {column id: text}. The grid draws only the columns in view, so
    the assistant panel is closed first and the page is wide."""
    page.wait_for_selector("[role=gridcell][col-id='metrics.`test_acc`']", timeout=60_000)
    page.get_by_role("button", name="Close").first.click()  # the MLflow Assistant panel
    page.wait_for_selector("[role=gridcell][col-id='params.`model`']", timeout=10_000)
    return page.evaluate("""() => [...document.querySelectorAll('.ag-center-cols-container [role=row]')].map(r =>
        Object.fromEntries([...r.querySelectorAll('[role=gridcell]')].map(c => [c.getAttribute('col-id'), c.innerText])))""")


def test_the_runs_table_opens_in_the_training_layout_with_metrics_and_params_filled(project, ui, browser,
                                                                                    screenshots):
    base, log = ui
    url = experiment_page_url(log)
    assert url.startswith(base)  # the page make ui prints follows its host and port
    page = browser.new_page(viewport={"width": 2400, "height": 560})
    page.goto(url)
    rows = {r["params.`model`"]: r for r in grid_rows(page)}
    assert sorted(rows) == sorted(MODELS)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist")
    for r in client.search_runs([exp.experiment_id]):
        shown = rows[r.info.run_name]
        assert float(shown["metrics.`test_acc`"]) == pytest.approx(r.data.metrics["test_acc"], abs=1e-3)
        assert float(shown["params.`lr`"]) == float(r.data.params["lr"])
        for column in ("metrics.`val_acc`", "metrics.`crop22_acc`", "metrics.`train_seconds`", "params.`optimizer`"):
            assert shown[column] not in ("", "-"), (r.info.run_name, column)
    nav = page.inner_text("aside")  # the model-training layout, not GenAI's (traces, judges)
    assert "Model registry" in nav and "Judges" not in nav
    page.screenshot(path=screenshots / "mlflow-runs.png")

    runs = [r.info.run_id for r in client.search_runs([exp.experiment_id])]
    page.set_viewport_size({"width": 1800, "height": 1500})
    page.goto(f"{base}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps([exp.experiment_id])}"
              "&workflowType=machine_learning")
    page.wait_for_selector("text=Parameters", timeout=60_000)
    page.wait_for_timeout(3000)
    text = page.inner_text("body")
    for name in ("lr", "optimizer", "test_acc", "crop22_acc"):
        assert name in text
    page.screenshot(path=screenshots / "mlflow-compare.png")
    page.close()


def test_the_report_page_links_each_model_to_the_run_that_made_its_weights(project, ui, browser):
    base, _ = ui
    page_html = (project / "reports/index.html").read_text()
    links = dict(re.findall(r'<section id="model-(\w+)">.*?<a href="([^"]+searchFilter=[^"]+)"', page_html, re.S))
    assert sorted(links) == sorted(MODELS)
    for model, link in links.items():
        page = browser.new_page(viewport={"width": 2400, "height": 560})  # a new page: a link from outside the UI
        page.goto(html.unescape(link).replace(ui_url(), base))  # the page names `make ui`'s default address
        page.wait_for_selector("text=1 matching run", timeout=60_000)
        page.wait_for_selector("[role=gridcell]", timeout=60_000)
        names = page.evaluate("""() => [...document.querySelectorAll('[role=gridcell][col-id="attributes.`Run Name`"]')]
            .map(c => c.innerText.trim().split('\\n').pop())""")  # a colour swatch, then the name
        assert names == [model], (model, names)
        page.close()


def test_dvc_plots_show_draws_offline_one_colour_per_model(project, browser, screenshots):
    assert (project / ".plots/page.html").is_file(), "make setup makes the offline page template"
    run([sys.executable, "-m", "dvc", "plots", "show"], project, pipeline_env())
    page_file = project / "dvc_plots/index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    context = browser.new_context(offline=True, viewport={"width": 1800, "height": 1200})
    requested = []
    context.route("**/*", lambda route: (requested.append(route.request.url), route.continue_()))
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.wait_for_selector("svg .role-legend-label", timeout=30_000)
    charts = page.evaluate("""() => [...document.querySelectorAll('svg')].map(svg => ({
        title: [...svg.querySelectorAll('.role-title-text')].map(t => t.textContent).join(' '),
        legend: [...svg.querySelectorAll('.role-legend-label')].map(t => t.textContent),
        axes: [...svg.querySelectorAll('.role-axis-title')].map(t => t.textContent),
        lines: svg.querySelectorAll('.mark-line path').length}))""")
    (loss,) = [c for c in charts if c["title"] == "Validation loss"]
    assert sorted(loss["legend"]) == sorted(["mlp", "cnn", "lenet", "workspace"])  # models, then the revision
    assert sorted(loss["axes"]) == ["cross-entropy loss", "epoch"] and loss["lines"] == 3
    assert [url for url in requested if not url.startswith("file:")] == []
    page.screenshot(path=screenshots / "dvc-plots.png")
    context.close()
