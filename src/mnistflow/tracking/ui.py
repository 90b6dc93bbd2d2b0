"""What a user sees of the project's runs in MLflow 3.17's UI: the experiments' layout, the saved
views of the runs table, and the links that open them. Written where a user asks for them
(`mnistflow ui` and `links`, the visualize stage), never by a stage whose outputs they could
change: no DVC output holds an experiment id, a host or a port.

The UI takes its layout from `workflowType` in the URL, else from the browser's last choice
(GenAI until the user picks "Model training" once); no experiment tag or server setting changes
that, so every link carries it. A runs-table view is an experiment tag
`mlflow.sharedViewState.<key>` holding a named envelope (what the UI's "Save view" writes, so the
view is listed under Views), opened by `?viewStateShareKey=<key>`. A `searchFilter` beside it in
the URL makes the UI drop the view, so a filtered link gets a view of its own with the filter
inside. The table orders its columns by kind (run name, created, metrics, params, tags), each
kind by name, whatever the view lists: so the run name says the model and what made it, and the
view holds few enough columns to fit 1600 px."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mnistflow.core.io import write_bytes
from mnistflow.tracking.runs import preferred_run

VIEW_PREFIX = "mlflow.sharedViewState."
RUN_COLOR = "mlflow.runColor"  # a run's colour in the charts (the UI's colour picker writes it)
# Ten colours told apart (Tableau 10), given to an experiment's runs in the order they started.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
TRAINING_LAYOUT = "workflowType=machine_learning"
HEADLINE = "mnistflow"  # the runs table of a dataset's experiment
REPORTS = "mnistflow-reports"  # the report runs
# The params that tell runs apart, and the tags that say what made them.
HEADLINE_PARAMS = ["model", "optimizer", "lr", "epochs", "batch_size", "shift"]
HEADLINE_TAGS = ["dvc_exp_name", "baseline", "model_md5", "node"]
LINKS_FILE = "mlflow-links.js"  # beside the report page: its MLflow links for this store and UI (not in DVC)
HOME_PAGE_HINT = ("From MLflow's home page an experiment opens in the GenAI layout (traces, no data): pick 'Model "
                  "training' at the top left once (the browser keeps it), then Views -> 'mnistflow: headline metrics'.")


def ui_url() -> str:
    """Where `make ui` serves the MLflow UI (the Makefile exports MLFLOW_UI_URL from its host and port)."""
    return os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


def runs_url(exp_id: str, view: str = HEADLINE, charts: bool = False) -> str:
    return (f"{ui_url()}/#/experiments/{exp_id}/runs?{TRAINING_LAYOUT}&viewStateShareKey={view}"
            + ("&compareRunsMode=CHART" if charts else ""))


def run_url(exp_id: str, run_id: str) -> str:
    return f"{ui_url()}/#/experiments/{exp_id}/runs/{run_id}?{TRAINING_LAYOUT}"


def headline_state(search: str = "") -> dict:
    """The runs table: test accuracy and calibration, validation accuracy, what varied, what made
    the run; newest first (the crop sets' accuracy is on the report page and among the charts).
    Its charts: test accuracy per run, and what varied against it."""
    metrics = ["test_acc", "test_ece", "val_acc"]
    section = "mnistflow-headline"
    return {
        "searchFilter": search, "orderByKey": "attributes.start_time", "orderByAsc": False,
        "selectedColumns": [*(f"metrics.`{m}`" for m in metrics), *(f"params.`{p}`" for p in HEADLINE_PARAMS),
                            *(f"tags.`{t}`" for t in HEADLINE_TAGS)],
        "compareRunSections": [{"uuid": section, "name": "Headline metrics", "display": True, "isReordered": True,
                                "deleted": False, "isGenerated": False}],
        "compareRunCharts": [
            {"uuid": "mnistflow-test-acc", "type": "BAR", "runsCountToCompare": 10, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "metricKey": "test_acc"},
            {"uuid": "mnistflow-parallel", "type": "PARALLEL", "runsCountToCompare": 10, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "selectedParams": HEADLINE_PARAMS[1:5], "selectedMetrics": ["test_acc"], "showAllRuns": False}],
        "isAccordionReordered": True,
    }


REPORTS_STATE = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
                 "selectedColumns": ["tags.`models`", "tags.`dvc_exp_name`", "tags.`baseline`"]}


def install(client, name: str) -> str | None:
    """The model-training layout and the saved view of experiment `name` (a `-reports` one: the
    report runs' view); returns its id, None when the store has no such experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    if exp.tags.get("mlflow.experimentKind") != "custom_model_development":  # what UIs before 3.17 read
        client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
    if name.endswith("-reports"):
        set_view(client, exp, REPORTS, "mnistflow: report runs", REPORTS_STATE)
    else:
        set_view(client, exp, HEADLINE, "mnistflow: headline metrics", headline_state())
        colour_runs(client, exp.experiment_id)
    return exp.experiment_id


STUDY_VIEW = "mnistflow-study-"  # + the study's name: the runs of one hyperparameter study


def install_study(client, experiment: str, study: str, parent: str, params: list[str]) -> str:
    """A saved view of one study's runs (its own, `parent`, unfolded to its trials' training
    runs), best validation accuracy first, with the params it searched; the link that opens it."""
    exp = client.get_experiment_by_name(experiment)
    key = STUDY_VIEW + study
    state = {"searchFilter": f"tags.`mnistflow.study` = '{study}'", "orderByKey": "metrics.`kept_val_acc`",
             "orderByAsc": False, "runsExpanded": {parent: True}, "selectedColumns": [
                 *(f"metrics.`{m}`" for m in ("kept_val_acc", "best_epoch", "stopped_epoch", "test_acc")),
                 *(f"params.`{p}`" for p in params), "tags.`mnistflow.trial`", "tags.`dvc_exp_name`"]}
    set_view(client, exp, key, f"mnistflow: study {study}", state)
    return runs_url(exp.experiment_id, key)


def colour_runs(client, exp_id: str) -> None:
    """A colour of its own for each run without one, by the order the runs started, so the
    latest ten runs differ in every chart (the UI's own choice repeats within three runs). A run
    keeps the colour it has, also one a user picked."""
    runs = client.search_runs([exp_id], order_by=["attributes.start_time ASC"], max_results=50_000)
    for index, run in enumerate(runs):
        if RUN_COLOR not in run.data.tags:
            client.set_tag(run.info.run_id, RUN_COLOR, PALETTE[index % len(PALETTE)])


def write_links(client, page_dir: Path) -> Path:
    """The report page's links, resolved for this store and this UI address: for each
    experiment, the start of a link to one of its views (the page adds the view's key); for each
    set of weights, the page of the run that trained them (found by its md5 tag; an
    evaluation-only run where no training run is left). The page loads it as a script (file://
    pages may load scripts, not read JSON), so its own bytes name no store."""
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    prefixes = {e.name: runs_url(e.experiment_id, "") for e in experiments}
    runs: dict[str, str] = {}
    for exp in experiments:
        by_weights: dict[str, list] = {}
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=50_000):
            if md5 := run.data.tags.get("model_md5"):
                by_weights.setdefault(md5, []).append(run)
        runs.update({md5: run_url(exp.experiment_id, preferred_run(rs).info.run_id) for md5, rs in by_weights.items()})
    path = Path(page_dir) / LINKS_FILE
    write_bytes(path, (f"window.mnistflowLinks = {json.dumps(prefixes, sort_keys=True)};\n"
                       f"window.mnistflowRuns = {json.dumps(runs, sort_keys=True)};\n").encode())
    return path


def set_view(client, exp, key: str, name: str, state: dict) -> None:
    """Write the view as the UI's "Save view" does, unless the experiment already holds it."""
    tag = VIEW_PREFIX + key
    try:
        old = json.loads(exp.tags.get(tag, ""))
        if old.get("name") == name and json.loads(old["state"]) == state:
            return
        created = old.get("createdAt", int(time.time() * 1000))
    except (ValueError, KeyError, TypeError, AttributeError):
        created = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": created, "updatedAt": int(time.time() * 1000), "state": json.dumps(state)}
    client.set_experiment_tag(exp.experiment_id, tag, json.dumps(envelope))
