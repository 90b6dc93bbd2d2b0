"""`mnistflow tune` end to end on tiny data: a study of mlp whose trials are queued DVC
experiments on two workers, one MLflow parent run with the trials' training runs as children, a
rerun that adds nothing, the best trial applied, a killed search resumed, and bad input refused
before anything is queued."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from conftest import ROOT, commit, dvc, free_port, make_project, needs_postgres, pipeline_env, run, set_params, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # minutes: make test-slow (CI) runs it

TRIALS = 6


def tune(project, *args, check=True, timeout=900):
    return run([sys.executable, "-m", "mnistflow.cli", "tune", *args], project, pipeline_env(), check=check,
               timeout=timeout)



def optuna_study(project, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'mlruns' / 'optuna.db'}")


def client_for(project) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def children(project, study):
    client = client_for(project)
    exp = client.get_experiment_by_name("mnist")
    parent, = client.search_runs([exp.experiment_id], f"tags.`mnistflow.study` = '{study}' and "
                                                      "tags.`mnistflow.trial` = 'study'")
    return parent, client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


@pytest.fixture(scope="module")
def project(tmp_path_factory, template):
    """The tiny project trained once (mlp alone), its search's space small and quick."""
    project = make_project(tmp_path_factory.mktemp("tune"), template, mlp={"epochs": 2})
    set_params(project, "train.models", ["mlp"])
    set_params(project, "tune.space", {"train.mlp.lr": {"type": "float", "low": 0.0005, "high": 0.02, "log": True},
                                       "train.mlp.batch_size": {"type": "choice", "choices": [32, 64]}})
    set_params(project, "tune.set", {"train.mlp.early_stop.patience": 1})
    dvc(project, "repro")
    commit(project, "baseline")
    return project


def test_a_study_runs_each_trial_as_a_dvc_experiment_and_a_child_run_in_mlflow(project):
    out = tune(project, "--trials", str(TRIALS), "--jobs", "2", "--study", "s1")
    workers = "".join(f.read_text() for f in sorted((project / ".dvc/tmp/exps/celery").glob("*.out")))
    assert f"study s1: {TRIALS} of {TRIALS} trials complete" in out.stdout, out.stdout + out.stderr + workers[-3000:]
    # A trial runs its model's stages, not the report page (drawn once, when the best is applied).
    assert stages_run(dvc(project, "queue", "logs", "s1-0").stdout) == ["check_params", "train@mlp", "evaluate@mlp"]
    shown = dvc(project, "exp", "show", "--no-pager", "--only-changed").stdout
    names = [f"s1-{n}" for n in range(TRIALS)]
    assert all(name in shown for name in names), shown  # as the user sees them
    study = optuna_study(project, "s1")
    assert sorted(t.number for t in study.trials if t.state.name == "COMPLETE") == list(range(TRIALS))
    # The objective is what each experiment's train stage wrote for its kept weights.
    for t in study.trials:
        assert 0.0 <= t.value <= 1.0 and set(t.params) == {"train.mlp.lr", "train.mlp.batch_size"}
    parent, kids = children(project, "s1")
    assert len(kids) == TRIALS and {k.data.tags["mnistflow.trial"] for k in kids} == {str(n) for n in range(TRIALS)}
    for kid in kids:  # each child trained its trial's params, with early stopping on
        trial = study.trials[int(kid.data.tags["mnistflow.trial"])]
        assert float(kid.data.params["lr"]) == pytest.approx(trial.params["train.mlp.lr"])
        assert kid.data.params["early_stop.patience"] == "1" and "best_epoch" in kid.data.metrics
        assert kid.data.metrics["kept_val_acc"] == trial.value  # the objective, in the view's first column
    assert parent.data.params["space.train.mlp.lr"] == "float [0.0005, 0.02] log"
    table = json.loads((project / "reports/study.json").read_text())  # for the report page, in git
    assert table["study"] == "s1" and len(table["trials"]) == TRIALS and table["dataset"] == "mnist"
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    artifacts = {a.path for a in client_for(project).list_artifacts(parent.info.run_id, "study")}
    assert {"study/study.json", "study/history.png", "study/slice.png", "study/importances.png"} <= artifacts

    again = tune(project, "--trials", str(TRIALS), "--jobs", "2", "--study", "s1")
    assert "queued" not in again.stdout and f"{TRIALS} of {TRIALS} trials complete" in again.stdout
    assert len(optuna_study(project, "s1").trials) == TRIALS and len(children(project, "s1")[1]) == TRIALS


def test_the_best_trial_applied_is_the_workspace_and_dvc_repro_runs_nothing(project):
    if not (project / "reports/tune/s1/study.json").exists():
        tune(project, "--trials", str(TRIALS), "--jobs", "2", "--study", "s1")
    best = json.loads((project / "reports/tune/s1/study.json").read_text())["best"]
    applied = tune(project, "--apply-best", "--study", "s1")
    assert f"applied {best['dvc_exp']}" in applied.stdout
    assert stages_run(dvc(project, "repro").stdout) == []
    page = (project / "reports/index.html").read_text()  # the page shows the study, best first
    assert 'id="study"' in page and f"<td>{best['dvc_exp']}</td>" in page and "study.png" in page
    exp = next(rev for baseline in json.loads(dvc(project, "exp", "show", "--json").stdout)
               for group in baseline.get("experiments") or [] for rev in group["revs"] if rev["name"] == best["dvc_exp"])
    weights = exp["data"]["outs"]["models/mlp.pt"]["hash"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert next(o["md5"] for o in lock["stages"]["train@mlp"]["outs"] if o["path"] == "models/mlp.pt") == weights
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["mlp"]["lr"] == pytest.approx(best["params"]["train.mlp.lr"])
    run(["git", "checkout", "--", "params.yaml", "dvc.lock", "reports/study.json"], project)  # the baseline back
    dvc(project, "checkout", "-q")


def test_a_killed_search_resumes_its_study_with_no_trial_lost_or_repeated(project):
    env = pipeline_env()
    # Slower trials (8 epochs, no early stop): the kill lands while they train.
    args = ["--trials", "4", "--jobs", "2", "--study", "s2", "-S", "train.mlp.epochs=8",
            "-S", "train.mlp.early_stop.patience=0"]
    with open(project / "tune-s2.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mnistflow.cli", "tune", *args], cwd=project, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # both trials training: kill the search, and one of them
        status = run([sys.executable, "-m", "dvc", "queue", "status"], project, env, check=False).stdout
        if re.search(r"s2-0\s.*Running", status) and re.search(r"s2-1\s.*Running", status):
            break
        time.sleep(0.5)
    else:
        pytest.fail((project / "tune-s2.log").read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run([sys.executable, "-m", "dvc", "queue", "kill", "s2-1"], project, env)
    assert [t.state.name for t in optuna_study(project, "s2").trials] == ["RUNNING", "RUNNING"]
    resumed = tune(project, *args)
    print(resumed.stdout)
    assert "trial 0: left running by a killed tune; its experiment s2-0 finished: kept" in resumed.stdout
    assert "trial 1: left running by a killed tune: failed, and asked again with the same params" in resumed.stdout
    study = optuna_study(project, "s2")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1 and "RUNNING" not in states, resumed.stdout
    # A trial the kill cut short was failed and asked again with its params; none ran twice.
    for failed in (t for t in study.trials if t.state.name == "FAIL"):
        again = [t for t in study.trials if t.user_attrs.get("retry_of") == failed.number]
        assert len(again) == 1 and again[0].params == failed.params and again[0].state.name == "COMPLETE"
    done = [tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(done)) == len(done)
    assert len(children(project, "s2")[1]) == 4


@pytest.mark.parametrize("args, message", [
    (["-S", "train.mlp.lrr=0.1"], "tune.set.train.mlp.lrr: 'train.mlp.lrr' is not a param in params.yaml"),
    (["-S", "train.mlp.epochs=many"], "tune.set.train.mlp.epochs: 'many' must be an integer >= 1"),
    (["--trials", "0"], "tune.trials: 0 is out of range; it must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_queued(project, args, message):
    bad = tune(project, *args, "--study", "bad", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {message}", bad.stderr
    assert "bad-" not in dvc(project, "exp", "show", "--no-pager").stdout


@needs_postgres
def test_two_clones_fill_one_study_on_the_team_server_with_no_trial_run_twice(project, tmp_path):
    """Two tune processes, each in a clone of its own, on one study kept in the team server's
    PostgreSQL (what `mnistflow server start` prints), their runs in its MLflow store."""
    folder, port = tmp_path / ".server", free_port()
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT / "src")}
    started = run([sys.executable, "-m", "mnistflow.cli", "server", "start", "--dir", str(folder), "--port", str(port)],
                  tmp_path, env, timeout=300)
    try:
        storage = re.search(r'MNISTFLOW_TUNE_STORAGE="(.+)"', started.stdout.replace(
            f"$(cat {folder / 'optuna-password'})", (folder / "optuna-password").read_text().strip())).group(1)
        team = {**pipeline_env(), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": (folder / "admin-password").read_text().strip(),
                "MNISTFLOW_TUNE_STORAGE": storage}
        clones = [tmp_path / f"clone{i}" for i in (1, 2)]
        for clone in clones:  # with the baseline's outputs and DVC cache, as after `dvc pull`
            shutil.copytree(project, clone, symlinks=True, ignore=shutil.ignore_patterns("tmp", "mlruns"))
        # 3 epochs: params of their own, so that no trial is answered from the run-cache the clones
        # share with this module's other studies (its weights' run would be in the local store)
        cmd = [sys.executable, "-m", "mnistflow.cli", "tune", "--trials", "5", "--jobs", "1", "--study", "team",
               "-S", "train.mlp.epochs=3"]
        # Each clone stands for a machine of its own: its runs say which (the runs view's node column).
        procs = [subprocess.Popen(cmd, cwd=clone, env={**team, "MNISTFLOW_NODE": clone.name}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for clone in clones]
        outs = [p.communicate(timeout=900)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
        import optuna

        study = optuna.load_study(study_name="team", storage=storage)
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(done) == 5 and "RUNNING" not in {t.state.name for t in study.trials}, "\n".join(outs)
        ran = [re.findall(r"^trial (\d+) \(team-\d+\):", out, re.M) for out in outs]
        assert all(ran) and not set(ran[0]) & set(ran[1]), outs  # both clones worked, on different trials
        assert len({tuple(sorted(t.params.items())) for t in done}) == 5
        client = MlflowClient(f"http://127.0.0.1:{port}")
        os.environ.update({k: team[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        try:
            exp = client.get_experiment_by_name("mnist")
            parents = client.search_runs([exp.experiment_id], "tags.`mnistflow.trial` = 'study'")
            assert len(parents) == 1  # one study run, however many processes opened the study
            kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
            assert sorted(int(k.data.tags["mnistflow.trial"]) for k in kids) == sorted(t.number for t in done)
            assert {k.data.tags["node"] for k in kids} == {"clone1", "clone2"}  # one experiment, two machines
        finally:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(key)
    finally:
        run([sys.executable, "-m", "mnistflow.cli", "server", "stop", "--dir", str(folder)], tmp_path, env, timeout=120)
