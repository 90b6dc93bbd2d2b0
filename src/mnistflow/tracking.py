"""Everything MLflow: where the store is, one run per trained model, what it records."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mnistflow.io import repo_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; never phone home

import mlflow  # noqa: E402, I001
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Metric, RunStatus  # noqa: E402

log = logging.getLogger(__name__)


UI_URL = "http://127.0.0.1:5000"  # where `make ui` serves the MLflow UI


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def _sqlite_path() -> Path:
    return Path(tracking_uri().removeprefix("sqlite:///")).resolve()


def use_store() -> None:
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        _sqlite_path().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)


def experiment_id(name: str) -> str:
    """Get or create the experiment; its artifacts go to an absolute path under mlruns/
    (a relative one would resolve inside DVC's temporary experiment copy and be lost)."""
    use_store()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None  # a tracking server decides for itself
    if tracking_uri().startswith("sqlite:///"):
        location = (_sqlite_path().parent / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return mlflow.get_experiment_by_name(name).experiment_id


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def file_md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def run_tags(dataset: str, device: torch.device) -> dict[str, str]:
    tags = {"dataset": dataset, "device": str(device), "torch_version": torch.__version__, **git_state()}
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextmanager
def tracked_run(experiment: str, run_name: str, params: dict, tags: dict,
                run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED on an error, or KILLED on an interrupt.
    `run_id` continues that run (a training resumed after a kill) when the store has it.
    Runs that a `kill -9` left RUNNING are marked FAILED first."""
    exp_id = experiment_id(experiment)
    fail_dead_runs(exp_id)
    client = mlflow.MlflowClient()
    if run_id and _run_exists(client, run_id):
        run = mlflow.start_run(run_id=run_id)
        log.info("MLflow run %s (%s) resumed in %s", run_id, run_name, tracking_uri())
    else:
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags)
        log.info("MLflow run %s (%s) in %s", run.info.run_id, run_name, tracking_uri())
    mlflow.set_tags({"host": socket.gethostname(), "pid": str(os.getpid())})
    try:
        mlflow.log_params(params)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def fail_dead_runs(exp_id: str) -> None:
    """Mark FAILED the RUNNING runs whose process on this host is gone (killed with -9);
    runs of live processes (parallel `dvc queue` workers) are left alone."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'"):
        pid = run.data.tags.get("pid")
        if run.data.tags.get("host") == host and pid and not _alive(int(pid)):
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            log.warning("MLflow run %s (%s) was left RUNNING by a killed process; marked FAILED",
                        run.info.run_id, run.info.run_name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_epoch(result) -> None:
    mlflow.log_metrics({
        "train_loss": result.train_loss, "train_acc": result.train_acc,
        "val_loss": result.val_loss, "val_acc": result.val_acc, "lr": result.lr,
        "epoch_seconds": result.seconds, "images_per_second": result.images_per_second,
    }, step=result.epoch)


def log_figure(fig, name: str) -> None:
    mlflow.log_figure(fig, name)


def log_model_args(model: torch.nn.Module) -> dict:
    """What `mlflow.pytorch.log_model` gets besides the model (on the CPU, in eval mode)."""
    # A batch of 2: torch.export fixes a size-1 batch dimension, and the model must take any batch.
    example = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    # Naming the requirements skips MLflow's inference of them, a fresh Python process that
    # imports torch again (seconds per model) and picks up unrelated imports such as tqdm.
    return {"input_example": example, "signature": mlflow.models.infer_signature(example, output),
            "pip_requirements": mlflow.pytorch.get_default_pip_requirements()}


def log_model(model: torch.nn.Module, weights_path: Path) -> None:
    """Log the model (pt2 format, with an input example and signature) and tag the run
    with the md5 of the weights file, which is how later stages find this run."""
    model = model.cpu().eval()
    mlflow.pytorch.log_model(model, name="model", **log_model_args(model))
    mlflow.set_tag("model_md5", file_md5(weights_path))


def find_training_run(experiment: str, model: str, model_md5: str):
    """The latest run that produced these exact weights, found by the md5 tag, so no MLflow
    id ever needs to be written into DVC-tracked outputs. None when the store lacks it."""
    use_store()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], output_format="list", max_results=1,
                              filter_string=f"tags.model_md5 = '{model_md5}' and attributes.run_name = '{model}'",
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def run_for_model(experiment: str, model: str, model_md5: str) -> str:
    """The id of the run holding these weights; when the store lost it (deleted, or the
    outputs came from DVC's run-cache), a new run tagged evaluation_only, and we say so."""
    run = find_training_run(experiment, model, model_md5)
    if run is not None:
        return run.info.run_id
    log.warning("no MLflow run holds %s with model_md5 %s; logging to a new evaluation-only run",
                model, model_md5)
    client = mlflow.MlflowClient()
    new = client.create_run(experiment_id(experiment), run_name=model,
                            tags={"model_md5": model_md5, "evaluation_only": "true", **git_state()})
    client.set_terminated(new.info.run_id)
    return new.info.run_id


def log_evaluation(experiment: str, model: str, model_md5: str, metrics: dict, figures: dict,
                   per_class: dict) -> str:
    """Add evaluation metrics, figures and per-class accuracy to the model's run without reopening it."""
    run_id = run_for_model(experiment, model, model_md5)
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for name, fig in figures.items():
        client.log_figure(run_id, fig, name)
    client.log_dict(run_id, per_class, "per_class_acc.json")
    return run_id


def log_artifacts(run_id: str, paths: list[Path], folder: str) -> None:
    client = mlflow.MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), folder)


def log_lineage(entries: dict, tags: dict, artifact: str) -> None:
    mlflow.log_dict(entries, artifact)
    mlflow.set_tags(tags)
