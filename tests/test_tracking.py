import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import ROOT
from mnistflow import tracking


@pytest.fixture
def store(tmp_path, monkeypatch, migrated_db):
    """A real sqlite store in a temp project root, found the way stages find it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "mlruns").mkdir()
    shutil.copy(migrated_db, tmp_path / "mlruns" / "mlflow.db")
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def statuses(client, experiment="exp"):
    exp = client.get_experiment_by_name(experiment)
    return [r.info.status for r in client.search_runs([exp.experiment_id])]


def test_store_follows_dvc_root_and_artifacts_are_absolute(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # as DVC's temp experiment copies run somewhere else
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    exp_id = tracking.experiment_id("exp")
    assert store.get_experiment(exp_id).artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert tracking.experiment_id("exp") == exp_id


def test_environment_overrides_the_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")  # a tracking server
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


@pytest.mark.parametrize("raised, status", [
    (None, "FINISHED"), (RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_run_never_stays_running(store, raised, status):
    def body():
        with tracking.tracked_run("exp", "cnn", {"train.cnn.lr": 0.1}, {"dataset": "mnist"}):
            if raised:
                raise raised("boom")
    if raised:
        with pytest.raises(raised):
            body()
    else:
        body()
    assert statuses(store) == [status]
    (run,) = store.search_runs([store.get_experiment_by_name("exp").experiment_id])
    assert run.data.params == {"train.cnn.lr": "0.1"} and run.info.run_name == "cnn"


def test_tags_record_git_state_and_the_dvc_experiment(monkeypatch, tmp_path):
    import torch
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lr")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    tags = tracking.run_tags("mnist", torch.device("cpu"))
    assert tags["dvc_exp_name"] == "lucky-lr" and tags["device"] == "cpu"
    env = tracking.environment()  # the rest goes to lineage.json, not into tags
    assert env["dvc_exp_baseline_rev"] == "abc123" and env["torch_version"] == torch.__version__
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")  # tests run in a clone
    assert tags["baseline"] == "abc123"  # the commit the experiment was made from, short
    assert tracking.run_label("cnn") == "cnn · lucky-lr"
    monkeypatch.chdir(tmp_path)  # not a git repo
    assert tracking.git_state() == {"git_commit": "unknown", "git_dirty": "unknown", "baseline": "unknown"}
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.run_label("cnn") == "cnn · no git"


def test_a_moved_store_is_repointed_and_its_artifacts_stay_readable(store, tmp_path, monkeypatch):
    with tracking.tracked_run("exp", "cnn", {"lr": 0.1}, {"dataset": "mnist"}) as run:
        run.log_dict({"a": 1}, "a.json")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    try:
        monkeypatch.setenv("DVC_ROOT", str(moved))
        db = moved / "mlruns" / "mlflow.db"
        assert tracking.relocate_store(db) == 2  # the experiment and the run
        assert tracking.relocate_store(db) == 0  # once is enough
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        uri = client.get_run(run.run_id).info.artifact_uri
        assert uri.startswith((moved / "mlruns").as_uri())
        assert json.loads(Path(client.download_artifacts(run.run_id, "a.json", str(tmp_path.parent))).read_text()) \
            == {"a": 1}
        assert client.get_experiment_by_name("exp").artifact_location == (moved / "mlruns" / "artifacts").as_uri()
    finally:
        moved.rename(tmp_path)


def test_champion_moves_only_to_a_better_version(store):
    client = store
    client.create_registered_model("mnist-cnn")
    exp = tracking.experiment_id("mnist")

    def version(test_acc):
        run = client.create_run(exp, run_name="cnn")
        client.log_metric(run.info.run_id, "test_acc", test_acc)
        client.create_model_version("mnist-cnn", "file:///nowhere", run_id=run.info.run_id)
        tracking.promote("mnist-cnn")
        return client.get_model_version_by_alias("mnist-cnn", "champion").version

    assert version(0.80) == 1
    assert version(0.70) == 1  # worse: stays
    assert version(0.80) == 1  # a tie is not better
    assert version(0.90) == 4


def test_the_training_run_of_weights_is_never_an_evaluation_only_run(store):
    client = store
    exp = tracking.experiment_id("mnist")
    assert tracking.find_training_run("mnist", "cnn", "abc") is None
    evaluated = tracking.run_for_model("mnist", "cnn", "abc")  # weights no run trained: evaluation only
    assert tracking.run_for_model("mnist", "cnn", "abc") == evaluated  # the next evaluation reuses it
    assert tracking.find_training_run("mnist", "cnn", "abc") is None
    trained = client.create_run(exp, tags={"model_md5": "abc"}).info.run_id
    client.log_param(trained, "lr", 0.01)
    tracking.run_for_model("mnist", "cnn", "abc")
    newer = client.create_run(exp, tags={"model_md5": "abc", "evaluation_only": "true"}).info.run_id
    assert tracking.find_training_run("mnist", "cnn", "abc").info.run_id == trained != newer
    assert tracking.run_for_model("mnist", "cnn", "abc") == trained


def test_only_tracking_imports_mlflow_and_only_when_it_records():
    package = ROOT / "src" / "mnistflow"
    imports = re.compile(r"^\s*(import mlflow|from mlflow)\b", re.M)
    importers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if imports.search(p.read_text()))
    assert importers and all(p.startswith("tracking/") for p in importers), importers
    assert "tracking/serving.py" in importers  # an MLflow flavor: MLflow loads it
    code = "import mnistflow.tracking, sys; print('mlflow' in sys.modules)"
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(package.parent)}).stdout
    assert out.strip() == "False"


def test_the_relocated_columns_are_every_artifact_location_of_mlflows_schema(tmp_path):
    """relocate.py edits MLflow's sqlite schema by SQL (no API moves a store): this fails loudly
    when an MLflow upgrade adds, renames or drops an artifact-location column."""
    import sqlite3

    from mnistflow.tracking.relocate import LOCATIONS

    db = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # MLflow creates its tables
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'")]
        columns = {(t, c) for t in tables for c in (r[1] for r in con.execute(f"pragma table_info({t})"))}
    located = {(t, c) for t, c in columns if re.fullmatch(r"(artifact_location|artifact_uri|storage_location)", c)}
    assert located == set(LOCATIONS)
