"""What a user sees of MLflow: the UI that `make ui` serves over the project's own store, in
headless Chromium (every link `make ui` prints and the report page holds, the home page, two
experiments on one model told apart), DVC's plots page, and a champion that `make serve`
answers over HTTP.

Screenshots go to a temporary folder, or to $SCREENSHOTS."""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from conftest import add_make, background, free_port, make_project, pipeline_env, run
from mnistflow.tools import screenshots as shots
from mnistflow.tracking import file_md5
from mnistflow.tracking.ui import HOME_PAGE_HINT

pytestmark = pytest.mark.e2e
MODELS = ["mlp", "cnn", "lenet"]
EXPERIMENTS = {"lr-a": "0.002", "lr-b": "0.004"}  # two DVC experiments on the same model


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained):
    project = make_project(tmp_path_factory.mktemp("ui"), trained[0])  # after its first `dvc repro`
    add_make(project)  # `make ui` and `make serve` as a user runs them
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project, pipeline_env())
    for (name, lr), stages in zip(EXPERIMENTS.items(), ([], ["train@mlp", "evaluate@mlp"])):
        # the second as a search's trial runs: its model's stages, no report page of its own
        run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, "-S", f"train.mlp.lr={lr}", *stages],
            project, pipeline_env())
    return project


def store(project) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


@contextmanager
def make_target(project: Path, target: str, url: str, **variables):
    """`make TARGET` in the background until `url` answers; stopped with its process group."""
    with background(["make", target, *(f"{k}={v}" for k, v in variables.items())], project, pipeline_env(), url,
                    project / f".{target}.log") as log:
        yield log


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
    rows = (project / "reports/confusion/cnn/confusion_test.csv").read_text().splitlines()[1:21]
    assert [row["class"] for row in answer] == [r.split(",")[1] for r in rows]
    assert [r.split(",")[0] for r in rows] == [classes[i] for i in labels]


@pytest.fixture(scope="module")
def ui(project):
    port = free_port()
    with make_target(project, "ui", f"http://127.0.0.1:{port}/health", UI_PORT=port) as log:
        yield f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def browser():
    try:
        with shots.browser() as b:
            yield b
    except Exception as exc:  # noqa: BLE001  (chromium missing)
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return Path(os.environ.get("SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))


def printed_links(log: Path) -> dict[str, str]:
    """What `make ui` printed: `<label>: <url>` per link."""
    return dict(line.split(": ", 1) for line in log.read_text().splitlines() if ": http" in line)


def assert_training_layout_with_the_view(page) -> None:
    nav = page.inner_text("aside")  # the model-training layout, not GenAI's (traces, judges)
    assert "Model registry" in nav and "Judges" not in nav, nav
    assert "You're viewing a shared view" in page.inner_text("body")  # the view's banner


def test_make_ui_is_one_server_process_without_mlflows_job_runner(ui):
    """MLflow's defaults: 4 workers and a job runner (15 processes, 33 s of CPU to start); ours: one."""
    port = int(ui[0].rsplit(":", 1)[1])
    server = psutil.Process(next(c.pid for c in psutil.net_connections("tcp")
                                 if c.laddr.port == port and c.status == psutil.CONN_LISTEN))
    while "mlflow" in " ".join(server.parent().cmdline()):  # up to `mlflow server`, under make
        server = server.parent()
    tree = [" ".join(p.cmdline()) for p in (server, *server.children(recursive=True))]
    assert not [c for c in tree if "huey" in c or "_job_runner" in c], tree
    assert len(tree) == 2, tree  # `mlflow server` and its uvicorn, serving alone (no worker processes)


def test_every_link_make_ui_prints_opens_the_training_layout_with_the_view_filled(project, ui, browser, screenshots):
    base, log = ui
    links = printed_links(log)
    assert list(links) == ["mnist", "mnist charts", "mnist-reports"]  # the runs table first
    said = log.read_text().splitlines()
    for label in links:  # each link with a line that says what it is
        assert said[said.index(next(line for line in said if line.startswith(f"{label}: "))) + 1].startswith("  the ")
    assert HOME_PAGE_HINT in log.read_text()  # what to click from MLflow's home page
    client = store(project)
    exp = client.get_experiment_by_name("mnist")
    runs = client.search_runs([exp.experiment_id])
    page = browser.new_page(viewport={"width": 2400, "height": 900})  # wide: the grid draws the columns in view
    shots.open_runs(page, links["mnist"])
    assert links["mnist"].startswith(base)  # the page make ui prints follows its host and port
    assert_training_layout_with_the_view(page)
    rows = {r["attributes.`Run Name`"]: r for r in shots.grid(page)}
    assert sorted(rows) == sorted(r.info.run_name for r in runs)
    for r in runs:
        shown = rows[r.info.run_name]
        assert float(shown["metrics.`test_acc`"]) == pytest.approx(r.data.metrics["test_acc"], abs=1e-3)
        assert float(shown["params.`lr`"]) == float(r.data.params["lr"])
        for column in ("metrics.`val_acc`", "metrics.`test_ece`", "params.`model`", "params.`epochs`", "tags.`baseline`"):
            assert shown[column] not in ("", "-"), (r.info.run_name, column)

    shots.open_runs(page, links["mnist charts"])  # the same view, as charts: the headline ones first
    assert_training_layout_with_the_view(page)
    page.wait_for_timeout(2000)
    charts = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
    page.screenshot(path=screenshots / "mlflow-charts.png")
    # the headline section first: test_acc per run, and what varied against it
    assert re.search(r"Headline metrics\s*\(2\)", charts) and "Parallel Co" in charts, charts[:2000]
    assert charts.index("Headline metrics") < charts.index("Model metrics")

    shots.open_runs(page, links["mnist-reports"])
    assert_training_layout_with_the_view(page)
    reports = shots.grid(page)
    assert reports and all(r["attributes.`Run Name`"].startswith("report · ") for r in reports)
    assert all(r["tags.`models`"] not in ("", "-") for r in reports)
    page.close()


def test_each_report_page_link_opens_the_run_that_trained_those_weights(project, ui, browser, screenshots):
    base, _ = ui
    # The page as a user opens it after `make ui` (which points its links at this store and UI).
    report = browser.new_page()
    report.goto((project / "reports/index.html").as_uri())
    links = dict(report.eval_on_selector_all(
        "section[id^=model-] a.mlflow", "links => links.map(a => [a.closest('section').id.slice(6), a.href])"))
    report.close()
    assert sorted(links) == sorted(MODELS)
    client = store(project)
    exp = client.get_experiment_by_name("mnist")
    # No saved view per set of weights: the Views menu holds the project's own view alone.
    assert [k for k in exp.tags if k.startswith("mlflow.sharedViewState.")] == ["mlflow.sharedViewState.mnistflow"]
    for model, link in links.items():
        md5 = file_md5(project / f"models/{model}.pt")  # the weights the page shows
        trained = [r for r in client.search_runs([exp.experiment_id], f"tags.model_md5 = '{md5}'")
                   if "evaluation_only" not in r.data.tags]
        newest = max(trained, key=lambda r: r.info.start_time)
        assert link == f"{base}/#/experiments/{exp.experiment_id}/runs/{newest.info.run_id}?workflowType=machine_learning"
        page = browser.new_page(viewport={"width": 1600, "height": 900})  # a new page: a link from outside the UI
        page.goto(link)
        for text in (newest.info.run_name, "test_acc"):  # the run's page: its name, its metrics with evaluation's
            page.wait_for_function("text => document.body.innerText.includes(text)", arg=text, timeout=60_000)
        nav = page.inner_text("aside")
        assert "Model registry" in nav and "Judges" not in nav, nav  # the model-training layout
        if model == "cnn":  # how busy the machine was while it trained: the run's System metrics tab
            shots.open_system_metrics(page, link)  # fails unless the CPU chart is drawn
            page.screenshot(path=screenshots / "mlflow-system-metrics.png")
        page.close()


def test_the_report_runs_of_dvc_experiments_name_them(project):
    client = store(project)
    reports = client.search_runs([client.get_experiment_by_name("mnist-reports").experiment_id])
    assert {r.data.tags.get("dvc_exp_name") for r in reports} >= {"lr-a"}  # the reports view's column


def test_every_run_has_a_colour_of_its_own_in_the_charts(project, ui):
    """MLflow's UI picks a run's colour from its id, and two of three runs often share one: `make
    ui` gives each run that has none the next of ten colours, by start time."""
    client = store(project)
    exp = client.get_experiment_by_name("mnist")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    colours = [r.data.tags.get("mlflow.runColor") for r in runs]
    assert all(colours) and len(set(colours[:10])) == min(10, len(runs)), colours


def test_two_dvc_experiments_on_one_model_are_told_apart_in_the_runs_table(project, ui, browser, screenshots):
    base, log = ui
    page = browser.new_page(viewport={"width": shots.WIDTH, "height": shots.HEIGHT})  # a laptop's window
    shots.open_runs(page, printed_links(log)["mnist"])
    names = shots.run_names(page)
    commit = run(["git", "rev-parse", "--short=7", "HEAD~0"], project).stdout.strip()
    for name in EXPERIMENTS:
        assert f"mlp · {name}" in names  # the model and the DVC experiment that made it
    assert sum(n.startswith("mlp · ") for n in names) == 3 and any(n == f"cnn · {commit}" or n.startswith("cnn · ")
                                                                    for n in names)
    rows = {r["attributes.`Run Name`"]: r for r in shots.grid(page)}
    for name, lr in EXPERIMENTS.items():
        assert float(rows[f"mlp · {name}"]["params.`lr`"]) == float(lr)  # what varied, in view at 1600 px
        assert rows[f"mlp · {name}"]["metrics.`test_acc`"] not in ("", "-")
    page.screenshot(path=screenshots / "mlflow-two-experiments.png")
    page.close()


def test_from_the_home_page_an_experiment_opens_as_the_hint_make_ui_prints_says(project, ui, browser):
    base, _ = ui
    context = browser.new_context(viewport={"width": shots.WIDTH, "height": shots.HEIGHT})  # a new browser profile
    page = context.new_page()
    page.goto(base)
    page.get_by_role("link", name="mnist", exact=True).first.click()
    page.wait_for_selector("text=Judges", timeout=60_000)  # the GenAI layout first: traces, judges
    page.wait_for_selector("text=No data available", timeout=60_000)
    assert "workflowType=genai" in page.url
    if page.get_by_role("button", name="Got it").count():  # GenAI's first tip covers the page
        page.get_by_role("button", name="Got it").click()
    page.get_by_text("Model training", exact=True).first.click()  # 'pick Model training at the top left once'
    page.wait_for_selector("[role=gridcell]", timeout=60_000)
    assert "Model registry" in page.inner_text("aside")
    page.get_by_test_id("saved-views-trigger").click()  # 'then Views -> mnistflow: headline metrics'
    page.get_by_text("mnistflow: headline metrics").click()
    page.wait_for_selector("[role=gridcell][col-id='metrics.`test_acc`']", timeout=60_000)
    context.close()


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
        labels: [...svg.querySelectorAll('.mark-text.role-axis-label')].map(m =>
            [...m.querySelectorAll('text')].map(t => t.textContent)),
        lines: svg.querySelectorAll('.mark-line path').length}))""")
    (loss,) = [c for c in charts if c["title"] == "Validation loss"]
    assert sorted(loss["legend"]) == sorted(["mlp", "cnn", "lenet", "workspace"])  # models, then the revision
    assert sorted(loss["axes"]) == ["cross-entropy loss", "epoch"] and loss["lines"] == 3
    confusion = [c for c in charts if "mlp · test" in c["title"] and "actual class (rows)" in c["title"]]
    assert confusion, [c["title"] for c in charts]  # one matrix per model and set, rows actual
    assert {"actual", "predicted"} <= set(confusion[0]["axes"])
    assert [str(d) for d in range(10)] in confusion[0]["labels"]  # mnist's classes in their order, not as met
    assert [url for url in requested if not url.startswith("file:")] == []
    page.screenshot(path=screenshots / "dvc-plots.png", full_page=True)
    context.close()


def test_dvc_plots_order_the_classes_as_the_dataset_does_and_normalize_each_row(project, browser, tmp_path):
    """The confusion template on classes whose names sort otherwise than their indices."""
    folder = project / "plots-probe"
    folder.mkdir()
    classes = ["zebra", "apple", "mango"]  # the dataset's order: 0, 1, 2
    rows = [(2, 0), (2, 2)] + [(1, 1)] * 2 + [(0, 0)] * 3 + [(0, 1)]  # not in the dataset's order
    (folder / "confusion_test.csv").write_text("actual,predicted,actual_index,predicted_index\n" + "".join(
        f"{classes[a]},{classes[p]},{a},{p}\n" for a, p in rows))
    out = tmp_path / "plots"
    run([sys.executable, "-m", "dvc", "plots", "show", str(folder / "confusion_test.csv"), "--template",
         "confusion_rows", "-x", "predicted", "-y", "actual", "--title", "probe", "-o", str(out)], project,
         pipeline_env())
    context = browser.new_context(offline=True)
    page = context.new_page()
    page.goto((out / "index.html").as_uri())
    page.wait_for_selector("svg .role-axis-label", timeout=30_000)
    labels = page.evaluate("""() => [...document.querySelectorAll('svg .role-axis')].map(axis =>
        [...axis.querySelectorAll('.role-axis-label text, text.role-axis-label')].map(t => t.textContent))""")
    texts = page.evaluate("() => [...document.querySelectorAll('svg .mark-text.role-mark text')].map(t => t.textContent)")
    context.close()
    assert [classes] * 2 == [labels[0], labels[1]] or [classes] * 2 == [labels[1], labels[0]], labels
    assert sorted(texts) == sorted(["0.75", "0.25", "1.00", "0.50", "0.50"])  # each row's share, not counts
