import pytest
from mlflow import MlflowClient

from mnistflow import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real sqlite store in a temp project root, found the way stages find it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
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
    assert tags["dvc_exp_name"] == "lucky-lr" and tags["dvc_exp_baseline_rev"] == "abc123"
    assert tags["device"] == "cpu" and tags["torch_version"] == torch.__version__
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")  # tests run in a clone
    monkeypatch.chdir(tmp_path)  # not a git repo
    assert tracking.git_state() == {"git_commit": "unknown", "git_dirty": "unknown"}
