"""Faults injected for real: signals and kill -9 mid-epoch, a diverging loss, a hostile pickle,
two `dvc repro` at once, a failing write. Each says what the user sees and what survives."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from conftest import make_project, pipeline_env, run, runs_of, set_params
from mnistflow.core.errors import DataError
from mnistflow.core.io import load_torch, write_bytes

pytestmark = pytest.mark.e2e
TRAIN = [sys.executable, "stages/train.py", "cnn", "data/processed"]
OUTS = ["models/cnn.pt", "reports/train/cnn.json", "reports/train/cnn.csv"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, template):
    # batch_size 1 makes an epoch long enough (about a second) to be interrupted in the middle
    project = make_project(tmp_path_factory.mktemp("faults"), template, cnn={"epochs": 4, "batch_size": 1})
    run([*TRAIN, "ref.pt", "ref.json", "ref.csv"], project, pipeline_env())  # uninterrupted reference
    return project


def interrupt(project, sig, after_epoch=2):
    """Start training, send `sig` once epoch `after_epoch` has ended: its log line comes after its
    checkpoint and MLflow metrics are written, so the signal lands in the next epoch."""
    (project / "models/cnn.pt").unlink(missing_ok=True)  # another test's output: a kill must leave none
    proc = subprocess.Popen([*TRAIN, *OUTS], cwd=project, env=pipeline_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f"cnn epoch {after_epoch}/4" in line:
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    return proc.wait(timeout=60), "".join(lines) + rest


def test_sigterm_saves_the_checkpoint_ends_the_run_killed_and_resume_matches(project):
    code, err = interrupt(project, signal.SIGTERM)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert runs_of(project)[-1].info.status == "KILLED"
    assert load_torch(project / "checkpoints/cnn.pt")["epoch"] == 2
    assert not (project / "models/cnn.pt").exists()  # no partial output

    resumed = run([*TRAIN, *OUTS], project, pipeline_env())
    assert "resuming after epoch 2 of 4" in resumed.stderr
    assert (project / "models/cnn.pt").read_bytes() == (project / "ref.pt").read_bytes()
    assert (project / "reports/train/cnn.csv").read_bytes() == (project / "ref.csv").read_bytes()
    last = runs_of(project)[-1]
    assert last.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(last.info.run_id, "val_acc")] == [1, 2, 3, 4]
    assert not (project / "checkpoints/cnn.pt").exists()


def test_kill_9_leaves_a_running_run_that_the_next_start_fails_and_resumes(project):
    code, _ = interrupt(project, signal.SIGKILL, after_epoch=1)
    assert code == -signal.SIGKILL
    killed = runs_of(project)[-1]
    assert killed.info.status == "RUNNING"
    resumed = run([*TRAIN, *OUTS], project, pipeline_env())
    assert f"MLflow run {killed.info.run_id} ({killed.info.run_name}) was left RUNNING by a killed process; " \
        "marked FAILED" in resumed.stderr
    assert "resuming after epoch 1 of 4" in resumed.stderr
    assert (project / "models/cnn.pt").read_bytes() == (project / "ref.pt").read_bytes()
    assert runs_of(project)[-1].info.status == "FINISHED"


def test_a_checkpoint_from_other_params_is_ignored_with_a_message(project):
    code, _ = interrupt(project, signal.SIGTERM, after_epoch=1)
    assert code == 130
    set_params(project, "train.cnn.epochs", 1)
    try:
        out = run([*TRAIN, *OUTS], project, pipeline_env())
    finally:
        set_params(project, "train.cnn.epochs", 4)
    assert "ignoring checkpoint" in out.stderr and "other params or data" in out.stderr
    assert "resuming" not in out.stderr


def test_a_diverging_loss_stops_training_with_a_clear_message(project):
    text = (project / "params.yaml").read_text()
    set_params(project, "train.mlp.optimizer", "sgd")
    set_params(project, "train.mlp.lr", 1e12)
    try:
        out = run([sys.executable, "stages/train.py", "mlp", "data/processed", "m.pt", "m.json", "m.csv"], project,
                  pipeline_env(), check=False)
    finally:
        (project / "params.yaml").write_text(text)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "mlp: the loss became NaN or infinite at epoch 1, batch" in out.stderr
    assert "Try a lower train.mlp.lr" in out.stderr
    assert runs_of(project)[-1].info.status == "FAILED" and not (project / "m.pt").exists()


def test_a_typo_in_params_is_refused_before_any_work(project):
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("    lr:", "    lrr:", 1))
    try:
        before = len(runs_of(project))
        out = run([*TRAIN, *OUTS], project, pipeline_env(), check=False)
        checked = run([sys.executable, "stages/check_params.py"], project, pipeline_env(), check=False)
    finally:
        (project / "params.yaml").write_text(text)
    for proc in (out, checked):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "unknown key 'train.mlp.lrr'; did you mean 'train.mlp.lr'?" in proc.stderr
    assert len(runs_of(project)) == before  # no MLflow run was even started


def test_a_second_dvc_repro_is_refused_while_one_runs_of(project):
    env = pipeline_env()
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@cnn"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in first.stdout:
        if "Running stage 'train@cnn'" in line:
            break
    second = run([sys.executable, "-m", "dvc", "repro"], project, env, check=False)
    assert second.returncode != 0
    said = second.stdout + second.stderr  # one of DVC's two locks refuses it, not just any failure:
    assert "Unable to acquire lock" in said or (  # the repo's lock, or the outputs' lock naming the first
        "is busy, it is being blocked by" in said and f"(PID {first.pid})" in said), said
    first.stdout.read()
    assert first.wait(timeout=300) == 0
    assert (project / "models/cnn.pt").read_bytes() == (project / "ref.pt").read_bytes()


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pt"
    torch.save({"weights": Exploit()}, path)
    with pytest.raises(DataError, match="refused"):
        load_torch(path)
    assert not marker.exists()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    write_bytes(path, b"old")

    class Boom(Exception):
        pass

    from mnistflow.core.io import atomic_path
    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_sigterm_under_torchrun_ends_the_run_killed_and_two_processes_resume(project):
    """train.nproc 2: torchrun passes the signal on; rank 0 saves, ends the run KILLED; the
    resumed pair ends with the bytes of an uninterrupted pair."""
    set_params(project, "train.nproc", 2)
    try:
        run([*TRAIN, "ref2.pt", "ref2.json", "ref2.csv"], project, pipeline_env())
        code, err = interrupt(project, signal.SIGTERM)
        assert code == 130 and "interrupted" in err and "Traceback" not in err
        assert runs_of(project)[-1].info.status == "KILLED"
        assert load_torch(project / "checkpoints/cnn.pt")["epoch"] == 2
        resumed = run([*TRAIN, *OUTS], project, pipeline_env())
    finally:
        set_params(project, "train.nproc", 1)
    assert "resuming after epoch 2 of 4" in resumed.stderr
    assert (project / "models/cnn.pt").read_bytes() == (project / "ref2.pt").read_bytes()
    last = runs_of(project)[-1]
    assert last.info.status == "FINISHED" and last.data.params["world_size"] == "2"
