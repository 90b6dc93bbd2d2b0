"""A team tracking server for real: a PostgreSQL cluster of its own and `mlflow server
--app-name basic-auth` on 127.0.0.1 (python -m mnistflow.tools.server, what `make server` runs); the
pipeline on tiny data against it, checked through the REST API; a wrong password stops the
pipeline at check_params with nothing touched; an unauthenticated request gets 401."""
from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, background, commit, free_port, make_project, needs_postgres, pipeline_env, run, set_params

pytestmark = [pytest.mark.e2e, needs_postgres]
MODELS = ["cnn"]  # what the server records is the same for every model: one, served below


def on_s3(s3) -> dict:
    """What a team exports before `make server` for artifacts on S3: bucket and prefix, the
    endpoint (an S3-compatible store's), and the server's own credentials."""
    return {"MNISTFLOW_ARTIFACTS": f"s3://{s3.bucket}/mlflow", "MLFLOW_S3_ENDPOINT_URL": s3.url, **s3.env}


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3):
    # A repo folder only its owner may enter, as root's home often is: PostgreSQL runs as an
    # unprivileged user who cannot reach it, so the cluster goes where it can, and start says so.
    # Its artifacts on S3: the clients below have no S3 credentials, the server alone talks to it.
    home = tmp_path_factory.mktemp("team")
    home.chmod(0o700)
    folder, port = home / ".server", free_port()
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT / "src"), **on_s3(s3)}
    started = run([sys.executable, "-m", "mnistflow.cli", "server", "start", "--dir", str(folder), "--port", str(port)],
                  home, env, timeout=300)
    assert "MLflow server at" in started.stdout
    if os.geteuid() == 0:
        moved = [line for line in started.stdout.splitlines() if "the PostgreSQL cluster is in" in line]
        assert len(moved) == 1 and "cannot reach" in moved[0], started.stdout
        cluster = Path(moved[0].rsplit(" ", 1)[1])
        assert (cluster / "pg" / "PG_VERSION").is_file() and not (folder / "pg").exists()
    try:
        yield f"http://127.0.0.1:{port}", (folder / "admin-password").read_text().strip()
    finally:
        run([sys.executable, "-m", "mnistflow.cli", "server", "stop", "--dir", str(folder)], home, env, timeout=120)
        assert not (folder / "mlflow.pid").exists()
        if os.geteuid() == 0:
            shutil.rmtree(cluster, ignore_errors=True)


def rest(url: str, path: str, password: str | None, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    if password is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
    return json.loads(data) if path.startswith("/api/2.0/mlflow/") else data


def test_the_pipeline_records_everything_on_the_team_server(server, tmp_path, template, s3, monkeypatch):
    url, password = server
    with pytest.raises(urllib.error.HTTPError) as unauthenticated:
        rest(url, "/api/2.0/mlflow/experiments/search?max_results=1", None)
    assert unauthenticated.value.code == 401

    project = make_project(tmp_path / "project", template)
    set_params(project, "train.models", MODELS)
    commit(project, "one model")
    shutil.rmtree(project / "mlruns")  # the template's local store: nothing may land there
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin"}
    wrong = run([sys.executable, "-m", "dvc", "repro"], project, {**env, "MLFLOW_TRACKING_PASSWORD": "wrong"},
                check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stdout + wrong.stderr
    assert f"error: the MLflow server at {url} refused user 'admin' (HTTP 401)" in wrong.stderr
    assert not any((project / d).exists() for d in ("models", "reports/train"))  # refused before any training

    run([sys.executable, "-m", "dvc", "repro"], project, {**env, "MLFLOW_TRACKING_PASSWORD": password}, timeout=900)
    assert not (project / "mlruns").exists()  # everything went to the server

    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist", password)["experiment"]
    runs = rest(url, "/api/2.0/mlflow/runs/search", password,
                {"experiment_ids": [experiment["experiment_id"]], "max_results": 50})["runs"]
    by_name = {next(p["value"] for p in r["data"]["params"] if p["key"] == "model"): r for r in runs}
    assert set(by_name) == set(MODELS)
    for model, r in by_name.items():
        assert r["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert params["model"] == model and params["dataset"] == "mnist"
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert {"val_acc", "test_acc", "crop22_acc", "train_seconds"} <= metrics
        history = rest(url, f"/api/2.0/mlflow/metrics/get-history?run_id={r['info']['run_id']}&metric_key=val_acc",
                       password)["metrics"]
        assert len(history) == 1  # one per epoch (make_project trains 1 epoch)
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert tags["model_md5"] and tags["dataset"] == "mnist"
        # the artifacts came through the server's proxy: the loss curve and the lineage
        artifact_root = r["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
        png = rest(url, f"/api/2.0/mlflow-artifacts/artifacts/{artifact_root}/loss_curve.png", password)
        assert png.startswith(b"\x89PNG")
        lineage = json.loads(rest(url, f"/api/2.0/mlflow-artifacts/artifacts/{artifact_root}/lineage.json", password))
        assert lineage
        registered = rest(url, f"/api/2.0/mlflow/registered-models/get?name=mnist-{model}", password)
        assert {a["alias"] for a in registered["registered_model"]["aliases"]} >= {"candidate", "champion"}

    # Every artifact went through the server into the bucket: the runs' files and the logged models.
    stored = s3.keys("mlflow/")
    assert any(k.endswith("/loss_curve.png") for k in stored) and any(k.endswith("/MLmodel") for k in stored)
    # The champion, loaded back from S3 through the server, answers as the weights file does.
    import mlflow
    import torch

    from mnistflow.models import create_model

    # Through the server: a client fetches S3 artifacts by presigned URLs by default, which moto
    # with its IAM check on cannot take (a 500, retried for minutes); a real S3 or MinIO takes them.
    for key, value in {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
                       "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(url)
    test = torch.load(project / "data/processed/test.pt", weights_only=True)
    stats = json.loads((project / "data/processed/stats.json").read_text())
    net = create_model("cnn")
    net.load_state_dict(torch.load(project / "models/cnn.pt", weights_only=True))
    with torch.no_grad():
        mean, std = (torch.tensor(stats[k]).view(-1, 1, 1) for k in ("mean", "std"))
        expected = net.eval()((test["images"].float() / 255 - mean) / std).argmax(1).tolist()
    served = mlflow.pyfunc.load_model("models:/mnist-cnn@champion", dst_path=str(tmp_path))
    assert [int(c) for c in served.predict(test["images"].numpy())["class"]] == expected
    # And served from there: `mnistflow serve cnn` (make serve) against the team server.
    port = free_port()
    with background([sys.executable, "-m", "mnistflow.cli", "serve", "cnn", "--port", str(port)], project,
                    {**env, "MLFLOW_TRACKING_PASSWORD": password, "PYTHONPATH": str(ROOT / "src"),
                     "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"},
                    f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", timeout=180):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"inputs": test["images"][:20].tolist()}).encode())
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        assert [int(row["class"]) for row in answer] == expected[:20]

    # The pull-request report links each model's weights to the run that trained them, on the server.
    report = run([sys.executable, "-m", "mnistflow.cli", "diff-report", "HEAD", "--out", str(tmp_path / "report")],
                 project, {**env, "MLFLOW_TRACKING_PASSWORD": password, "PYTHONPATH": str(ROOT / "src")}).stdout
    for model, r in by_name.items():
        (row,) = [line for line in report.splitlines() if line.startswith(f"| {model} | `")]
        assert f"[run]({url}/#/experiments/{experiment['experiment_id']}/runs/{r['info']['run_id']}?" in row, row


@pytest.mark.parametrize("change, message", [
    ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "{url} refused the credentials (SignatureDoesNotMatch): set AWS_ACCESS_KEY_ID "
                                         "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the server starts"),
    ({"MNISTFLOW_ARTIFACTS": "s3://nope/mlflow"}, "there is no bucket 'nope' at {url}: create it, or set "
                                                  "MNISTFLOW_ARTIFACTS to s3://<bucket>/<prefix>"),
    ({"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "no S3 server answers at http://127.0.0.1:{port}: set "
                                                             "MLFLOW_S3_ENDPOINT_URL to your S3 server's URL (unset for AWS)"),
])
def test_a_wrong_s3_setting_is_one_line_before_anything_starts(s3, tmp_path, change, message):
    port = free_port()
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT / "src"), **on_s3(s3),
           **{k: v.format(port=port) for k, v in change.items()}}
    folder = tmp_path / ".server"
    refused = run([sys.executable, "-m", "mnistflow.cli", "server", "start", "--dir", str(folder), "--port", str(free_port())],
                  tmp_path, env, check=False, timeout=120)
    artifacts = env["MNISTFLOW_ARTIFACTS"]
    assert refused.returncode == 1 and refused.stderr == \
        f"error: MNISTFLOW_ARTIFACTS ({artifacts}): {message.format(url=s3.url, port=port)}\n", refused.stderr
    assert not folder.exists()  # no database made, no server started


@pytest.mark.slow
def test_eight_queued_experiments_land_complete_on_the_server(server, tmp_path):
    """The load test (bench/team_load.py): eight experiments on four `dvc queue` workers at once."""
    url, password = server
    out = run([sys.executable, str(ROOT / "bench/team_load.py"), "--stores", "server", "--url", url,
               "--exps", "8", "--jobs", "4", "--json", str(tmp_path / "load.json")], ROOT,
              {**pipeline_env(), "MLFLOW_TRACKING_PASSWORD": password}, check=False, timeout=1500)
    (result,) = json.loads((tmp_path / "load.json").read_text())
    assert result["problems"] == [] and out.returncode == 0, out.stdout + out.stderr
    assert result["complete"] == 8 and result["log_batch_errors"] == 0


def test_concurrent_promoters_leave_the_best_version_champion_whatever_their_order(server, monkeypatch):
    """Queue workers against the server each log a test accuracy and promote at once, with no
    lock between them: `champion` must end on the best version (the earliest of a tie)."""
    import threading
    import uuid

    from mnistflow import tracking

    url, password = server
    for key, value in {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                       "MLFLOW_TRACKING_PASSWORD": password}.items():
        monkeypatch.setenv(key, value)
    client = tracking.client()
    name = f"race-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    experiment = tracking.experiment_id(name)
    accuracies = [0.5, 0.7, 0.9, 0.6, 0.9, 0.8, 0.3, 0.85]  # versions 3 and 5 tie: 3 is the champion
    runs = [client.create_run(experiment).info.run_id for _ in accuracies]
    for run_id in runs:
        client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    start, failures = threading.Barrier(len(runs)), []

    def worker(run_id: str, test_acc: float) -> None:
        try:
            start.wait()
            client.log_metric(run_id, "test_acc", test_acc)
            tracking.promote(name)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=pair) for pair in zip(runs, accuracies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert client.get_model_version_by_alias(name, "champion").version == "3"
