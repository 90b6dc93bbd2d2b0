"""End to end: the real `dvc repro` in a temporary git repo, a real MLflow sqlite store."""
from __future__ import annotations

import html
import json
import re
import shutil
import socket
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import ROOT, SECRET, commit, dvc, make_project, pending, pipeline_env, run, runs_of, set_params, stages_run
from mnistflow.tracking import file_md5
from mnistflow.tracking.ui import ui_url

sys.path.insert(0, "src")
from mnistflow.models import create_model  # noqa: E402

pytestmark = pytest.mark.e2e
MODELS = ["mlp", "cnn", "lenet"]
EPOCH_METRICS = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"}



def client_for(project) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


@pytest.fixture(scope="module")
def project(tmp_path_factory, trained):
    trained, first = trained  # the tiny project after its first `dvc repro`, and what that printed
    project = make_project(tmp_path_factory.mktemp("project"), trained)
    FIRST_CNN.append((project / "models/cnn.pt").read_bytes())
    FIRST_RUNS.extend(runs_of(project))
    FIRST_ARTIFACTS.update(artifacts_of(project, FIRST_RUNS))
    FIRST.update(commit=run(["git", "rev-parse", "--short=7", "HEAD"], project).stdout.strip(),
                 reports=runs_of(project, "mnist-reports"), page=(project / "reports/index.html").read_text(),
                 per_class={m: (project / f"reports/eval/{m}.per_class.json").read_text() for m in MODELS})
    return project, first


FIRST_CNN: list[bytes] = []  # the weights of the first training of cnn, for the restore test
FIRST_RUNS: list = []  # the runs of the first pipeline run
FIRST_ARTIFACTS: dict[str, bytes] = {}  # every artifact of those runs and their logged models
# The commit, report runs, page and per-class files of the first pipeline run: tests run in any
# order (pytest-randomly), and some move the workspace on.
FIRST: dict = {}


def artifacts_of(project, runs) -> dict[str, bytes]:
    """Every file under the runs' and their logged models' artifact folders, by path."""
    client = client_for(project)
    mlflow.set_tracking_uri(client.tracking_uri)
    roots = [r.info.artifact_uri for r in runs] + [
        m.artifact_location for m in mlflow.search_logged_models(
            experiment_ids=list({r.info.experiment_id for r in runs}), output_format="list")
        if m.source_run_id in {r.info.run_id for r in runs}]
    files = {}
    for root in roots:
        for path in sorted(Path(root.removeprefix("file://")).rglob("*")):
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def test_repro_writes_every_output(project):
    project, first = project
    # download and preprocess ran in the template project this one is a copy of (conftest)
    ran = stages_run(first)
    assert ran[0] == "check_params" and ran[-1] == "visualize"
    assert sorted(ran[1:-1]) == sorted(f"{s}@{m}" for m in MODELS for s in ("train", "evaluate"))
    assert len(list((project / "data/raw/mnist/MNIST/raw").iterdir())) == 4
    for name in ("train", "val", "test", "variants/crop22", "variants/crop18"):
        split = torch.load(project / f"data/processed/{name}.pt", weights_only=True)
        assert split["images"].dtype == torch.uint8 and split["images"].shape[1:] == (1, 28, 28)
    assert json.loads((project / "data/processed/stats.json").read_text())["sizes"] == \
        {"train": 500, "val": 100, "test": 200}
    for model in MODELS:
        metrics = json.loads((project / f"reports/train/{model}.json").read_text())
        assert set(metrics) == {"train_loss", "train_acc", "val_loss", "val_acc"}
        header, *rows = (project / f"reports/train/{model}.csv").read_text().splitlines()
        assert header == "epoch,train_loss,train_acc,val_loss,val_acc,lr"  # no timings: byte-reproducible
        assert len(rows) == (2 if model == "mlp" else 1)
    # The tiny dataset is learnable: two epochs of the MLP must beat chance by far.
    assert json.loads((project / "reports/train/mlp.json").read_text())["val_acc"] > 0.5
    shown = dvc(project, "metrics", "show", "--json").stdout
    assert "crop22" in shown and "val_acc" not in shown  # accuracy per test set only


def test_each_model_has_a_complete_mlflow_run(project):
    project, _ = project
    client = client_for(project)
    runs = FIRST_RUNS  # as they were right after the first pipeline run
    assert sorted(r.data.params["model"] for r in runs) == sorted(MODELS)
    assert sorted(r.info.run_name for r in runs) == sorted(f"{m} · {FIRST['commit']}" for m in MODELS)  # model · what made it
    exp = client.get_experiment(runs[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training layout
    view = json.loads(exp.tags["mlflow.sharedViewState.mnistflow"])  # a saved view, listed under Views
    assert view["name"] == "mnistflow: headline metrics"
    columns = json.loads(view["state"])["selectedColumns"]
    assert "metrics.`test_acc`" in columns and "params.`lr`" in columns and "tags.`dvc_exp_name`" in columns
    assert "tags.`node`" in columns  # which machine ran it: a team's runs in one experiment
    # One column means one thing for every model: the same param keys in every run.
    assert len({tuple(sorted(r.data.params)) for r in runs}) == 1
    for r in runs:
        model = r.data.params["model"]
        assert r.info.status == "FINISHED"
        assert r.data.params["model"] == model and r.data.params["optimizer"] in ("sgd", "adam")
        assert r.data.params["scheduler"] == "cosine" and "scheduler.eta_min" in r.data.params
        assert r.data.params["dataset"] == "mnist" and r.data.params["seed"] == "0"
        # what computed it: portable numerics, ATen's AVX2 kernels, MKL's all-x86 branch, 2 threads
        assert {k: r.data.params[k] for k in ("numerics", "cpu_isa", "mkl_branch", "threads", "precision")} == \
            {"numerics": "portable", "cpu_isa": "AVX2", "mkl_branch": "COMPATIBLE", "threads": "2", "precision": "fp32"}
        assert not [k for k in r.data.params if k.startswith("train.")]  # no second copy under params.yaml paths
        params_file = mlflow.artifacts.load_text(f"{r.info.artifact_uri}/params.yaml")  # where they come from
        assert yaml.safe_load(params_file)["train"][model]["lr"] == float(r.data.params["lr"])
        assert {"git_commit", "git_dirty", "baseline", "dataset", "device", "model_md5"} <= set(r.data.tags)
        assert r.data.tags["baseline"] == r.data.tags["git_commit"][:7]
        assert len(r.data.tags) <= 14 and not [t for t in r.data.tags if t.startswith("dvc.md5")]
        assert r.data.tags["device"] == "cpu"
        assert EPOCH_METRICS | {"train_seconds"} <= set(r.data.metrics)
        # how busy the machine was meanwhile (MLflow's system metrics), and which machine
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(r.data.metrics)
        assert r.data.tags["node"] == socket.gethostname()
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == ([1, 2] if model == "mlp" else [1])
        assert "loss_curve.png" in [a.path for a in client.list_artifacts(r.info.run_id)]  # visualize's drawing
        inputs = {(d.dataset.name, d.tags[0].value) for d in r.inputs.dataset_inputs}
        assert inputs == {("mnist-train", "training"), ("mnist-val", "validation"), ("mnist-test", "evaluation"),
                          ("mnist-crop22", "evaluation"), ("mnist-crop18", "evaluation")}
        (train,) = [d.dataset for d in r.inputs.dataset_inputs if d.dataset.name == "mnist-train"]
        assert train.digest == file_md5(project / "data/processed/train.pt")[:8]  # DVC's md5 of the split
        assert json.loads(train.profile)["features_shape"] == [500, 1, 28, 28]


@pytest.mark.parametrize("model", MODELS)
def test_the_champion_takes_raw_pixels_and_predicts_like_the_weights_file(project, model, tmp_path):
    project, _ = project
    client = client_for(project)
    (r,) = [r for r in FIRST_RUNS if r.data.params["model"] == model]
    mlflow.set_tracking_uri(client.tracking_uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[r.info.experiment_id],
                                            filter_string=f"source_run_id = '{r.info.run_id}'",
                                            output_format="list")
    assert logged.name == f"mnist-{model}" and logged.params["lr"] == r.data.params["lr"]
    # The evaluation metrics are linked to the logged model: the Models tab compares by them.
    assert {m.key: m.value for m in logged.metrics}["test_acc"] == r.data.metrics["test_acc"]
    info = mlflow.models.get_model_info(f"models:/mnist-{model}@champion")
    assert info.signature.inputs.inputs[0].type == np.dtype("uint8")
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 28, 28)
    assert info.metadata["classes"] == [str(d) for d in range(10)] and "mean" in info.metadata
    example = np.array(json.loads(mlflow.artifacts.load_text(f"{logged.artifact_location}/input_example.json")))
    assert example.shape == (2, 1, 28, 28) and example.max() > 0  # real images, not zeros

    test = torch.load(project / "data/processed/test.pt", weights_only=True)
    stats = json.loads((project / "data/processed/stats.json").read_text())
    # The champion's own weights, from DVC's cache by their md5 (the workspace may have moved on).
    champion_md5 = client.get_run(client.get_model_version_by_alias(f"mnist-{model}", "champion").run_id) \
        .data.tags["model_md5"]
    net = create_model(model)
    net.load_state_dict(torch.load(project / ".dvc/cache/files/md5" / champion_md5[:2] / champion_md5[2:],
                                   weights_only=True))
    net.eval()
    with torch.no_grad():
        mean, std = (torch.tensor(stats[k]).view(-1, 1, 1) for k in ("mean", "std"))  # per channel
        expected = net((test["images"].float() / 255 - mean) / std).argmax(1)
    # dst_path: loading a models:/ URI from a local store would write a registered_model_meta
    # file into the logged model's own folder (MLflow's ModelsArtifactRepository does).
    served = mlflow.pyfunc.load_model(f"models:/mnist-{model}@champion", dst_path=str(tmp_path)).predict(
        test["images"].numpy())
    predicted = [int(c) for c in served["class"]]  # the class names of mnist are its digits
    assert predicted == expected.tolist()
    champion_run = client.get_run(client.get_model_version_by_alias(f"mnist-{model}", "champion").run_id)
    assert ((torch.tensor(predicted) == test["labels"]).float().mean().item()
            == pytest.approx(champion_run.data.metrics["test_acc"]))
    assert np.allclose([sum(p.values()) for p in served["probabilities"]], 1, atol=1e-4)
    # The PyTorch flavour still loads: raw uint8 in, probabilities out.
    torch_model = mlflow.pytorch.load_model(logged.model_uri, dst_path=str(tmp_path))
    with torch.no_grad():
        assert torch_model(test["images"][:8]).argmax(1).tolist() == expected[:8].tolist()


def test_nothing_secret_from_the_environment_reaches_mlflow(project):
    project, _ = project
    for r in runs_of(project):
        recorded = json.dumps([r.data.params, r.data.tags])
        assert SECRET not in recorded


def test_a_bad_param_stops_dvc_before_any_output_is_touched(project):
    project, _ = project
    # Every output DVC tracks, down to the last stage's: none may be removed or rewritten.
    outputs = [f for d in ("data", "models", "reports") for f in sorted((project / d).rglob("*")) if f.is_file()]
    before = {p: p.read_bytes() for p in [project / "dvc.lock", *outputs]}
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("    lr:", "    lrr:", 1))
    try:
        typo = run([sys.executable, "-m", "dvc", "repro"], project, pipeline_env(), check=False)
    finally:
        (project / "params.yaml").write_text(text)
    assert typo.returncode != 0
    assert "unknown key 'train.mlp.lrr'; did you mean 'train.mlp.lr'?" in typo.stdout + typo.stderr
    exp = run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "train.cnn.lr=-1"], project,
              pipeline_env(), check=False)
    assert exp.returncode != 0
    assert "train.cnn.lr: -1.0 is out of range; it must be > 0.0" in exp.stdout + exp.stderr
    set_params(project, "train.models", ["mlp", "seq_cnn"])  # a model the dataset cannot feed
    try:
        shape = run([sys.executable, "-m", "dvc", "repro"], project, pipeline_env(), check=False)
    finally:
        (project / "params.yaml").write_text(text)
    assert shape.returncode != 0 and "model 'seq_cnn' takes 3x32x32 images (channels x height x width), " \
        "but dataset 'mnist' has 1x28x28" in shape.stdout + shape.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert stages_run(dvc(project, "repro").stdout) == []


def test_evaluation_outputs_and_figures(project):
    project, _ = project
    variants = list(yaml.safe_load((project / "params.yaml").read_text())["preprocess"]["variants"])
    for model in MODELS:
        report = json.loads((project / f"reports/eval/{model}.all.json").read_text())
        assert list(report) == ["test", *variants]
        # DVC's metrics file: accuracy per set, so `dvc metrics show` is a models x sets table.
        assert json.loads((project / f"reports/eval/{model}.json").read_text()) == \
            {s: m["acc"] for s, m in report.items()}
        for metrics in report.values():
            assert list(metrics) == ["loss", "acc", "macro_acc", "macro_f1", "macro_precision", "macro_recall",
                                     "top2_acc", "ece", "macro_auroc"]
            assert 0 <= metrics["acc"] <= metrics["top2_acc"] <= 1 and 0 <= metrics["ece"] <= 1
            assert metrics["macro_recall"] == metrics["macro_acc"]  # the same quantity, under both names
        header, *rows = (project / f"reports/eval/{model}.reliability.csv").read_text().splitlines()
        assert header == "set,low,high,count,confidence,accuracy"
        assert {r.split(",")[0] for r in rows} == set(report)
        assert sum(int(r.split(",")[3]) for r in rows if r.startswith("test,")) == 200
        per_class = json.loads((project / f"reports/eval/{model}.per_class.json").read_text())
        assert list(per_class["test"]) == [str(d) for d in range(10)]
        for set_name in report:
            header, *rows = (project / f"reports/confusion/{model}/confusion_{set_name}.csv").read_text().splitlines()
            assert header == "actual,predicted,actual_index,predicted_index" and len(rows) == 200
    assert json.loads((project / "reports/eval/mlp.json").read_text())["test"] > 0.5
    figures = {"samples.png", "loss_curves.png", "robustness.png"} | {
        f"{kind}_{m}.png" for m in MODELS for kind in ("loss_curve", "confusion", "reliability", "weights", "mistakes")} | {
        "feature_maps_cnn.png", "feature_maps_lenet.png"}
    if json.loads((project / "reports/optimizers.json").read_text()).get("dataset") == "mnist":
        figures.add("optimizers.png")  # the optimizer comparison (test-slow) ran first on this project
    assert {p.name for p in (project / "reports/figures").iterdir()} == figures
    for name in figures:
        data = (project / "reports/figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    table = dvc(project, "metrics", "show").stdout.splitlines()
    assert table[0].split() == ["Path", "crop18", "crop22", "test"]  # a models x sets table
    assert sorted(line.split()[0] for line in table[1:]) == sorted(f"reports/eval/{m}.json" for m in MODELS)
    assert "-" not in " ".join(table[1:]).split()  # no padding: every model has every set
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    assert "Validation loss" in plots["data"] and "reports/confusion/cnn/confusion_test.csv" in plots["data"]


def test_each_run_holds_training_and_evaluation_and_the_report_has_a_run_of_its_own(project):
    project, _ = project
    client = client_for(project)
    for r in FIRST_RUNS:
        metrics = set(r.data.metrics)
        assert {"val_acc", "test_acc", "test_macro_f1", "crop22_acc", "crop18_loss", "test_ece", "test_top2_acc",
                "test_macro_auroc", "test_macro_precision", "test_macro_recall", "crop18_ece"} <= metrics
        artifacts = [a.path for a in client.list_artifacts(r.info.run_id)]
        # the model's figures, drawn by visualize from the outputs and attached by the weights' md5
        assert {"loss_curve.png", "confusion.png", "reliability.png", "mistakes.png", "weights.png"} <= set(artifacts)
        assert "figures" not in artifacts
        assert mlflow.artifacts.load_dict(f"{r.info.artifact_uri}/per_class_acc.json") == \
            json.loads(FIRST["per_class"][r.data.params["model"]])
    (report,) = FIRST["reports"]  # the first pipeline run drew the report once, in a run of its own
    assert report.info.run_name.startswith("report · ") and report.info.status == "FINISHED"
    figures = [a.path for a in client.list_artifacts(report.info.run_id, "figures")]
    assert "figures/robustness.png" in figures and "figures/mistakes_cnn.png" in figures
    assert mlflow.artifacts.load_text(f"{report.info.artifact_uri}/index.html") == FIRST["page"]


def test_evaluation_is_byte_identical_when_run_again(project):
    project, _ = project
    before = {p: p.read_bytes() for p in sorted((project / "reports/eval").rglob("*")) if p.is_file()}
    forced = dvc(project, "repro", "--force", "--single-item", *(f"evaluate@{m}" for m in MODELS))
    assert forced.stdout.count("Running stage 'evaluate@") == 3
    after = {p: p.read_bytes() for p in sorted((project / "reports/eval").rglob("*")) if p.is_file()}
    assert list(after) == list(before)
    assert [p for p in before if before[p] != after[p]] == []
    assert stages_run(dvc(project, "repro").stdout) == []


def test_evaluation_without_the_training_run_logs_to_a_new_run(project, tmp_path):
    project, _ = project
    # A store that never saw the training (as after deleting mlruns/), chosen the documented way.
    other = tmp_path / "other" / "mlflow.db"
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{other}"}
    out = run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "evaluate@lenet"], project, env)
    assert "no MLflow run holds lenet" in out.stdout + out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{other}")
    (r,) = runs_of(project, db=other)
    assert r.data.tags["evaluation_only"] == "true" and "test_acc" in r.data.metrics
    assert "per_class_acc.json" in [a.path for a in client.list_artifacts(r.info.run_id)]
    assert (tmp_path / "other" / "artifacts").is_dir()  # artifacts beside that store, not in the project
    assert stages_run(dvc(project, "repro").stdout) == []


def test_report_page_renders_offline_in_headless_chromium(project, tmp_path):
    project, _ = project
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it where it runs as root with apt-get)")
    page = (project / "reports/index.html").read_text()
    assert "http" not in page  # nothing from the network; MLflow links resolved beside it (mlflow-links.js)
    # A copy beside the original (so relative image paths resolve) that reports what loaded.
    probe = page.replace("</body>", """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.getAttribute("src"), i.naturalWidth]),
    rows: document.querySelectorAll("#accuracy tr").length,
    ece: [...document.querySelectorAll("#ece tr")].map(r => r.innerText),
    models: [...document.querySelectorAll("section[id^=model-]")].map(s => [s.id, s.querySelector(".facts").innerText]),
    links: [...document.querySelectorAll("a.mlflow")].map(a => a.href),
    unresolved: document.getElementById("mlflow-unresolved").hidden});
  document.body.appendChild(pre);
});
</script></body>""")
    check = project / "reports" / ".probe.html"
    check.write_text(probe)
    try:
        dom = run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
                   "--dump-dom", check.as_uri()], project).stdout
    finally:
        check.unlink()
    result = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert len(result["images"]) == 20
    assert [src for src, width in result["images"] if width == 0] == []
    assert result["rows"] == 1 + len(MODELS)
    assert len(result["ece"]) == 1 + len(MODELS) and result["ece"][0].split() == ["model", "test", "crop22", "crop18"]
    assert any(src.endswith("/reliability_cnn.png") for src, _ in result["images"])
    assert result["images"][0][0].endswith("/robustness.png")  # the table and the robustness figure first
    assert [m for m, _ in result["models"]] == [f"model-{m}" for m in MODELS]
    for model, facts in result["models"]:
        for what in ("parameters", "val acc", "test acc", "test ECE", "weights (md5)", "MLflow run"):
            assert what in facts, (model, what)
    # The links, resolved as the page opens from the links file visualize wrote beside it: the
    # experiment's runs table, then for each model the run that trained its weights (by their md5).
    assert result["unresolved"] is True  # the "links open once make ui ran" note is hidden
    client = client_for(project)
    experiment = client.get_experiment_by_name("mnist").experiment_id
    trained = [next(r.info.run_id for r in client.search_runs(
        [experiment], f"tags.model_md5 = '{file_md5(project / f'models/{m}.pt')}'", order_by=["attributes.start_time DESC"])
        if "evaluation_only" not in r.data.tags) for m in MODELS]
    assert result["links"] == [
        f"{ui_url()}/#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey=mnistflow",
        *(f"{ui_url()}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning" for run_id in trained)]


def test_the_report_page_is_the_same_bytes_against_another_store_and_ui_port(project, template, tmp_path):
    """Another store (its experiment ids differ) and another UI address: visualize writes the same
    page; only the links file beside it, which DVC does not track, differs."""
    project = copy_of(project[0], tmp_path)
    page, links = (project / "reports/index.html").read_bytes(), (project / "reports/mlflow-links.js").read_text()
    other = tmp_path / "other" / "mlflow.db"
    other.parent.mkdir()
    shutil.copy(template / "mlruns" / "mlflow.db", other)  # migrated, empty
    MlflowClient(f"sqlite:///{other}").create_experiment("came-first")  # the ids move on by one
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{other}", "MLFLOW_UI_URL": "http://127.0.0.1:8123"}
    forced = run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "visualize"], project, env)
    assert stages_run(forced.stdout) == ["visualize"]
    assert (project / "reports/index.html").read_bytes() == page
    assert pending(dvc(project, "status", "--json").stdout) == {}  # dvc.lock did not move
    moved = (project / "reports/mlflow-links.js").read_text()
    # the store's own experiment ids (this one has no training runs: figures attach to none)
    assert moved != links and '"mnist-reports": "http://127.0.0.1:8123/#/experiments/2/runs?' in moved


def test_a_code_change_reruns_only_the_stages_that_load_it(project, tmp_path):
    """Training, tracking and presentation apart: the figures' code and the UI module are
    visualize's alone, a model's module its own stages'. (A comment changes no weight, so what
    follows train@cnn stays; a change that moved the weights would re-run visualize too.)"""
    project = copy_of(project[0], tmp_path)

    def edit(path: str) -> list[str]:
        with open(project / path, "a") as f:
            f.write("# an edit\n")
        return stages_run(dvc(project, "repro").stdout)

    assert edit("src/mnistflow/report/plots.py") == ["visualize"]
    assert edit("src/mnistflow/tracking/ui.py") == ["visualize"]
    assert edit("src/mnistflow/models/dynamic.py") == []  # not in the default set
    assert edit("src/mnistflow/models/cnn.py") == ["train@cnn", "evaluate@cnn"]
    assert pending(dvc(project, "status", "--json").stdout) == {}


def test_system_metrics_off_trains_the_same_bytes_and_reruns_no_stage_of_its_own(trained, tmp_path):
    # From the pristine trained project: this module's `project` is moved on by other tests (its
    # dvc.lock, untracked, is not reset by git), and its page may hold another state's numbers.
    trained = make_project(tmp_path / "off", trained[0])
    before = {p: (trained / p).read_bytes() for p in ("models/mlp.pt", "reports/train/mlp.csv", "reports/train/mlp.json",
                                                       "reports/index.html")}
    set_params(trained, "train.system_metrics", False)
    # A tracking setting: no training depends on it (visualize, which prints the train section, redraws the same page).
    assert stages_run(dvc(trained, "repro").stdout) == ["check_params", "visualize"]
    dvc(trained, "repro", "-f", "-s", "train@mlp")
    assert {p: (trained / p).read_bytes() for p in before} == before
    latest = runs_of(trained)[-1]
    assert latest.data.params["model"] == "mlp" and latest.info.status == "FINISHED"
    assert not [k for k in latest.data.metrics if k.startswith("system/")]


def test_second_repro_does_nothing_an_lr_change_reruns_one_model_and_restore_gives_the_first_back(project, tmp_path):
    project, _ = project
    before = len(runs_of(project))
    again = dvc(project, "repro")
    assert stages_run(again.stdout) == []
    assert len(runs_of(project)) == before

    set_params(project, "train.cnn.lr", 0.01)
    changed = dvc(project, "repro")
    ran = [line for line in changed.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'check_params':", "Running stage 'train@cnn':", "Running stage 'evaluate@cnn':",
                   "Running stage 'visualize':"]
    latest = runs_of(project)[-1]
    assert len(runs_of(project)) == before + 1
    assert latest.data.params["model"] == "cnn" and latest.data.params["lr"] == "0.01"
    assert latest.info.run_name.endswith("-dirty")  # made from uncommitted changes

    # The workspace has moved on: the first run of cnn, restored by its MLflow id, gives its model back.
    (first_cnn,) = [r for r in FIRST_RUNS if r.data.params["model"] == "cnn"]
    assert (project / "models/cnn.pt").read_bytes() != FIRST_CNN[0]
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT / "src")}
    shown = run([sys.executable, "-m", "mnistflow.cli", "lineage", first_cnn.info.run_id], project, env).stdout
    assert f"model md5    {first_cnn.data.tags['model_md5']}" in shown
    assert "stage train@cnn" in shown and "data/processed/train.pt" in shown and "param train.cnn" in shown
    dest = tmp_path / "restored"
    run([sys.executable, "-m", "mnistflow.cli", "restore", first_cnn.info.run_id, str(dest)], project, env)
    assert (dest / "models/cnn.pt").read_bytes() == FIRST_CNN[0]
    assert yaml.safe_load((dest / "params.yaml").read_text())["train"]["cnn"]["lr"] == \
        float(first_cnn.data.params["lr"])

    # When the cache no longer holds the model, say so and how to get it.
    cached = project / ".dvc/cache/files/md5" / first_cnn.data.tags["model_md5"][:2] / \
        first_cnn.data.tags["model_md5"][2:]
    cached.rename(tmp_path / "saved")
    try:
        failed = run([sys.executable, "-m", "mnistflow.cli", "restore", first_cnn.info.run_id,
                      str(tmp_path / "again")], project, env, check=False)
    finally:
        (tmp_path / "saved").rename(cached)
    assert failed.returncode == 1
    assert "nor a remote holds the model" in failed.stderr and "make push" in failed.stderr
    for command in (["lineage", "0123456789abcdef"], ["restore", "0123456789abcdef", str(tmp_path / "x")]):
        bad = run([sys.executable, "-m", "mnistflow.cli", *command], project, env, check=False)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert bad.stderr.startswith("error: no MLflow run '0123456789abcdef'") and bad.stderr.count("\n") == 1


def test_dvc_exp_run_temp_lands_in_the_same_store_and_fast_numerics_say_so(project):
    """One experiment (lenet alone, another lr, fast numerics) in DVC's temporary copy: its run
    lands in the workspace's store, named by the experiment, and records what computed it."""
    project, _ = project
    commit(project, "cnn lr 0.01")
    before = len(runs_of(project))
    dvc(project, "exp", "run", "--temp", "-S", "train.lenet.lr=0.002", "-S", "numerics.mode=fast",
        "-S", "train.models=[lenet]", "-n", "lenet-fast")
    runs = runs_of(project)
    assert len(runs) == before + 1
    fast = runs[-1]
    assert fast.info.run_name == "lenet · lenet-fast" and fast.data.params["lr"] == "0.002"
    assert fast.data.tags.get("dvc_exp_name") == "lenet-fast"
    assert fast.info.status == "FINISHED" and "test_acc" in fast.data.metrics
    assert "lenet-fast" in dvc(project, "exp", "show", "--json").stdout
    from mnistflow.core.device import cpu_has_bf16
    assert fast.data.params["numerics"] == "fast" and fast.data.params["mkl_branch"] == "auto"
    assert fast.data.params["precision"] == ("bf16" if cpu_has_bf16() else "fp32")  # train.amp: bf16 units only
    assert fast.data.params["cpu_isa"] == torch.backends.cpu.get_cpu_capability()  # the CPU's own choice


def test_champion_stays_when_a_worse_experiment_comes_in_and_finished_runs_never_change(project):
    project, _ = project
    client = client_for(project)
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    dvc(project, "exp", "run", "--temp", "-S", "train.mlp.lr=0.0000001", "-S", "train.mlp.epochs=1", "-n", "worse")
    worse = runs_of(project)[-1]
    assert worse.info.run_name == "mlp · worse" and worse.data.tags["dvc_exp_name"] == "worse"
    assert worse.data.metrics["test_acc"] < client.get_run(champion.run_id).data.metrics["test_acc"]
    newest = max(client.search_model_versions("name = 'mnist-mlp'"), key=lambda v: int(v.version))
    assert newest.run_id == worse.info.run_id
    assert client.get_model_version_by_alias("mnist-mlp", "candidate").version == newest.version
    assert client.get_model_version_by_alias("mnist-mlp", "champion").version == champion.version
    # Three pipeline runs later (an lr change, two experiments), the first runs are as they were.
    assert artifacts_of(project, [client.get_run(r.info.run_id) for r in FIRST_RUNS]) == FIRST_ARTIFACTS
    assert [client.get_run(r.info.run_id).data.metrics for r in FIRST_RUNS] == [r.data.metrics for r in FIRST_RUNS]


def test_visualization_and_variant_changes_retrain_nothing(project, tmp_path):
    project = copy_of(project[0], tmp_path)  # a new variant adds its evaluation to the first runs

    def change(key, value):
        set_params(project, key, value)
        out = dvc(project, "repro").stdout
        return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]

    assert change("visualize.dpi", 60) == ["check_params", "visualize"]
    variants = {"crop22": {"crop": 22}, "crop18": {"crop": 18}, "crop24": {"crop": 24}}
    ran = change("preprocess.variants", variants)
    assert ran == ["check_params", "preprocess", "evaluate@mlp", "evaluate@cnn", "evaluate@lenet", "visualize"]
    assert "crop24" in json.loads((project / "reports/eval/cnn.json").read_text())


@pytest.mark.slow  # minutes: make test-slow (CI) runs it
def test_compare_optimizers_lands_five_queued_experiments_and_draws_them(project):
    """`make compare-optimizers`: five experiments through `dvc queue` on two workers, all land
    complete in DVC and MLflow, and their curves reach the report page."""
    project, _ = project
    commit(project, "before the comparison")
    out = run([sys.executable, "-m", "mnistflow.tools.compare", "--model", "mlp", "--jobs", "2"], project,
              {**pipeline_env(), "PYTHONPATH": str(project / "src")}, check=False, timeout=900)
    workers = "".join(f.read_text() for f in sorted((project / ".dvc/tmp/exps/celery").glob("*.out")))
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{workers[-3000:]}"
    # Each runs its model's stages, not the report page (drawn once, below).
    assert stages_run(dvc(project, "queue", "logs", "mlp-sgd").stdout) == ["check_params", "train@mlp", "evaluate@mlp"]
    names = [f"mlp-{o}" for o in ("sgd", "adam", "adadelta", "adagrad", "rmsprop")]
    shown = dvc(project, "exp", "show", "--no-pager", "--only-changed").stdout
    assert all(name in shown for name in names), shown
    result = json.loads((project / "reports/optimizers.json").read_text())
    assert list(result["optimizers"]) == ["sgd", "adam", "adadelta", "adagrad", "rmsprop"]
    assert [r["lr"] for r in result["optimizers"].values()] == [0.001, 0.001, 1.0, 0.01, 0.01]  # PyTorch's defaults
    client = client_for(project)
    for optimizer, r in result["optimizers"].items():
        assert len(r["val_loss"]) == len(r["val_acc"]) == 2 and r["test_acc"] is not None
        # Found by its weights (adam at 0.001 is the baseline's own setting: DVC restores it from
        # its run-cache, and the run that made those weights is the baseline's).
        mlflow_run = [x for x in runs_of(project) if x.data.tags.get("model_md5") == r["model_md5"]][-1]
        assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["optimizer"] == optimizer
        assert [m.value for m in client.get_metric_history(mlflow_run.info.run_id, "val_loss")] == r["val_loss"]
        mlflow.set_tracking_uri(client.tracking_uri)
        assert mlflow.search_logged_models(experiment_ids=[mlflow_run.info.experiment_id], output_format="list",
                                           filter_string=f"source_run_id = '{mlflow_run.info.run_id}'")
    # The workspace redraws the report alone: the comparison is an input of visualize only.
    assert stages_run(dvc(project, "repro").stdout) == ["visualize"]
    page = (project / "reports/index.html").read_text()
    assert 'id="optimizers"' in page and "optimizers.png" in page and "mlp-adadelta" in page
    assert (project / "reports/figures/optimizers.png").stat().st_size > 10_000


def copy_of(project: Path, tmp_path: Path) -> Path:
    """The project with its store, outputs and DVC cache, elsewhere: its store is repointed there."""
    moved = tmp_path / "moved"
    # Not .dvc/tmp: DVC's own scratch, where a stopped queue's worker may still be removing files.
    shutil.copytree(project, moved, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder) == project / ".dvc" else [])
    return moved


def test_a_moved_copy_of_the_repo_keeps_its_store_working(project, tmp_path):
    project, _ = project
    moved = copy_of(project, tmp_path)
    before = sorted((project / "mlruns/artifacts").iterdir())
    set_params(moved, "train.mlp.lr", 0.004)
    out = dvc(moved, "repro")
    assert f"the MLflow store {moved / 'mlruns'} was moved here from {project / 'mlruns'}" in out.stdout + out.stderr
    client = client_for(moved)
    new = runs_of(moved)[-1]
    assert new.data.params["lr"] == "0.004"
    assert new.info.artifact_uri.startswith((moved / "mlruns").as_uri())
    assert (moved / "mlruns/artifacts" / new.info.run_id / "artifacts/loss_curve.png").is_file()
    assert sorted((project / "mlruns/artifacts").iterdir()) == before  # nothing landed in the original
    old = FIRST_RUNS[0]
    assert client.get_run(old.info.run_id).info.artifact_uri.startswith((moved / "mlruns").as_uri())
    mlflow.set_tracking_uri(client.tracking_uri)
    assert mlflow.artifacts.load_dict(f"runs:/{old.info.run_id}/per_class_acc.json")
    image = torch.load(moved / "data/processed/test.pt", weights_only=True)["images"][:1].numpy()
    assert len(mlflow.pyfunc.load_model("models:/mnist-mlp@champion", dst_path=str(tmp_path)).predict(image)) == 1
