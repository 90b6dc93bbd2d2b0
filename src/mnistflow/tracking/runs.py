"""One run per trained model (`tracked_run` yields a `TrackedRun` that records it), ending
FINISHED, FAILED or KILLED, and runs a killed process left RUNNING marked FAILED; evaluation
added to the run that made the weights, found by their md5; one run per report drawing."""
from __future__ import annotations

import getpass
import logging
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mnistflow.tracking.provenance import file_md5, git_state, made_from, run_label
from mnistflow.tracking.registry import log_model_args, model_name, name_candidate, promote
from mnistflow.core.errors import MnistflowError, OutOfSpace, out_of_space
from mnistflow.tracking.store import (client, errors, experiment_id, mlflow_module, sqlite_path, store_exists,
                                     tracking_uri, unreachable)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PROCESS_TAG = "process"  # host:pid of the stage that runs it; finds runs a `kill -9` left RUNNING


@dataclass(frozen=True)
class TrackedRun:
    """One model's training run: what it records, by run id through one client."""

    client: Any
    run_id: str

    def log_epoch(self, result) -> None:
        metrics = {"train_loss": result.train_loss, "train_acc": result.train_acc, "val_loss": result.val_loss,
                   "val_acc": result.val_acc, "lr": result.lr, "epoch_seconds": result.seconds,
                   "images_per_second": result.images_per_second}
        self.log_metrics(metrics, step=result.epoch)

    def log_metrics(self, metrics: dict[str, float], step: int = 0, model_id: str | None = None,
                    dataset=None) -> None:
        """`model_id` and `dataset` link the values to a logged model and a dataset (evaluation)."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        names = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset is not None else {}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step, model_id=model_id, **names)
                                                    for k, v in metrics.items()])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which the run holds `key`: what a resumed run need not log again."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_inputs(self, datasets: list, context: str) -> None:
        """Datasets (see `dataset`) as the run's inputs: training, validation or evaluation."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        self.client.log_inputs(self.run_id, [
            DatasetInput(Dataset(**d.to_dict()), [InputTag("mlflow.data.context", context)]) for d in datasets])

    def log_params_file(self, path: Path) -> None:
        """params.yaml as the stage read it: where each logged param sits in it (train.<model>.lr)."""
        self.client.log_artifact(self.run_id, str(path))

    def log_dict(self, obj: dict, artifact: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact)

    def log_model(self, model: torch.nn.Module, weights_path: Path, name: str, **served) -> None:
        """Log and register the served model (see log_model_args), point `candidate` at the new
        version, and tag the run with the md5 of the weights file: how later stages find it."""
        # Model.log writes through MLflow's default client, into its current experiment: point both
        # at this run's (given only run_id, it would file the model under experiment 0).
        mlflow = mlflow_module()
        import mlflow.models  # noqa: F401  (the train stage alone logs a model)
        mlflow.set_tracking_uri(self.client.tracking_uri)
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        info = mlflow.models.Model.log(artifact_path=None, name=name, registered_model_name=name,
                                       run_id=self.run_id, **log_model_args(model.cpu().eval(), **served))
        name_candidate(self.client, name, info.registered_model_version, self.client.get_run(self.run_id).info.run_name)
        self.client.set_tag(self.run_id, "model_md5", file_md5(weights_path))
        log.info("model %s version %s logged in run %s", name, info.registered_model_version, self.run_id)


# Seconds between samples of the machine's use (MLflow's default, 10, misses most of a short
# run); MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, MLflow's own variable, overrides it.
SAMPLING_SECONDS = 2


@contextmanager
def system_metrics(run_id: str, node: str | None = None) -> Iterator[None]:
    """CPU, memory, disk, network and (with pynvml) GPU use sampled into run `run_id` while the
    block runs: MLflow's own monitor, the one `mlflow.start_run(log_system_metrics=True)` starts,
    here by run id, so it leaves the run's status to `tracked_run` and can serve another node's
    process. `node` (a machine's name) keeps one series per machine: system/<node>/..."""
    mlflow_module()
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_SECONDS, resume_logging=True, node_id=node,
                                   tracking_uri=tracking_uri())
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def peer_system_metrics(run_id: str | None, node: str | None):
    """For another machine's first process under torchrun: its machine's use sampled into rank
    0's run `run_id` where its store holds that run (a tracking server both reach; a machine's
    own local store does not); else nothing. Never a reason to stop training: a store this
    machine cannot reach is one warning."""
    if not (run_id and node and store_exists()):
        return nullcontext()
    try:
        if _run_exists(client(), run_id):
            return system_metrics(run_id, node)
    except (MnistflowError, *errors()) as exc:
        log.warning("no system metrics from %s: %s", node, exc)
    return nullcontext()


@contextmanager
def tracked_run(experiment: str, run_name: str, params: dict, tags: dict, run_id: str | None = None,
                machine_use: bool = False, node: str | None = None) -> Iterator[TrackedRun]:
    """An MLflow run that ends FINISHED, FAILED on an error, or KILLED on an interrupt.
    `run_id` continues that run (a training resumed after a kill) when the store has it.
    Runs that a `kill -9` left RUNNING are marked FAILED first. `machine_use`: the machine's
    use sampled into the run meanwhile (`system_metrics`, as `node`)."""
    from mlflow.entities import Param, RunStatus

    exp_id = experiment_id(experiment)  # the client, first made here, has reaped dead runs
    store = client()
    if run_id and _run_exists(store, run_id):
        store.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        log.info("MLflow run %s (%s) resumed in %s", run_id, run_name, tracking_uri())
    else:
        run_id = store.create_run(exp_id, run_name=run_name, tags={**context_tags(), **tags}).info.run_id
        log.info("MLflow run %s (%s) in %s", run_id, run_name, tracking_uri())
    store.set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{os.getpid()}")
    try:
        store.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])  # a resumed run: the same
        with system_metrics(run_id, node) if machine_use else nullcontext():
            yield TrackedRun(store, run_id)
    except KeyboardInterrupt:
        store.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        if unreachable(exc):  # MLflow's client has retried for its whole budget: no use asking again
            raise MnistflowError(f"the MLflow server at {tracking_uri()} stopped answering or kept failing (its "
                                 "artifact store, say), and MLflow's client "
                                 f"gave up ({type(exc.__cause__ or exc.__context__).__name__} after its retries); "
                                 f"run {run_id} stays RUNNING "
                                 "and the last finished epoch's checkpoint is kept: run the stage again once the "
                                 "server is back, and it resumes that run") from None
        if out_of_space(exc) and not isinstance(exc, OutOfSpace):  # the store's disk: no use writing FAILED there
            _drop_artifacts(store, run_id)
            raise OutOfSpace(f"no space left on device for the MLflow store at {tracking_uri()}: run {run_id} stays RUNNING until the next start marks it "
                             "FAILED, its partial artifacts are removed, and the last finished epoch's "
                             "checkpoint is kept; free some space and run again") from None
        store.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    store.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _drop_artifacts(store, run_id: str) -> None:
    """Remove the artifacts a full disk cut short (the run's and its logged models'), where they
    are local files: MLflow copies artifacts in place, not through a temporary file."""
    import shutil
    from urllib.parse import urlparse

    mlflow = mlflow_module()
    mlflow.set_tracking_uri(store.tracking_uri)
    run = store.get_run(run_id)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    for uri in [run.info.artifact_uri, *(m.artifact_location for m in models)]:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            shutil.rmtree(parsed.path, ignore_errors=True)


def context_tags() -> dict[str, str]:
    """MLflow's system tags for who ran what, as its own `start_run` sets them (the UI's User and
    Source columns)."""
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": os.path.basename(sys.argv[0]) or "python",
            "mlflow.source.type": "LOCAL"}
    commit = git_state()["git_commit"]
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _run_exists(store, run_id: str) -> bool:
    try:
        store.get_run(run_id)
        return True
    except errors():
        return False


def fail_dead_runs(store) -> None:
    """Mark FAILED the RUNNING runs whose process on this host is gone (killed with -9, or a
    torchrun worker that died with its agent); runs of live processes (parallel `dvc queue`
    workers) and of other hosts are left alone."""
    host = socket.gethostname()
    exp_ids = [e.experiment_id for e in store.search_experiments()]
    for run in (store.search_runs(exp_ids, "attributes.status = 'RUNNING'") if exp_ids else []):
        run_host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if run_host == host and pid.isdigit() and not _alive(int(pid)):
            store.set_terminated(run.info.run_id, "FAILED")
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


def dataset(name: str, path: Path, images: torch.Tensor, labels: torch.Tensor):
    """A split as an MLflow dataset: its shape and size, its file, and DVC's md5 of that file
    as the digest (so runs on the same bytes show the same digest)."""
    import mlflow.data  # noqa: F401  (imported here: the stages that log no dataset skip it)

    with warnings.catch_warnings():  # MLflow registers its local-file source class twice, and says so
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        return mlflow_module().data.from_numpy(images.cpu().numpy(), targets=labels.cpu().numpy(), name=name,
                                      source=str(path), digest=file_md5(path)[:8])


def run_of_weights(experiment: str, model_md5: str):
    """The latest run that trained these exact weights, else the latest evaluation-only run of
    them, else None. Runs are found by the weights' md5 tag, so no MLflow id is ever written into
    DVC-tracked outputs."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return None
    return preferred_run(client().search_runs([exp.experiment_id], filter_string=f"tags.model_md5 = '{model_md5}'",
                                              order_by=["attributes.start_time DESC"]))


def preferred_run(runs: list):
    """Of the runs of one set of weights, newest first: the newest that trained them, else the
    newest evaluation-only one (None for none)."""
    return next((r for r in runs if "evaluation_only" not in r.data.tags), runs[0] if runs else None)


def find_training_run(experiment: str, model: str, model_md5: str):
    """The run that trained these weights, never an evaluation-only run (which holds their
    metrics but no params or history); None when the store lacks it."""
    run = run_of_weights(experiment, model_md5)
    return None if run is None or "evaluation_only" in run.data.tags else run


def attach_figures(experiment: str, model: str, model_md5: str, figures: dict[str, Path]) -> str | None:
    """The report's figures of one model's weights ({artifact name: file}), attached to the run
    that trained them (found by the md5), each once: a run keeps the figures first drawn of it,
    a report run holds every drawing. None when the store has no run of these weights."""
    import shutil
    import tempfile

    run = run_of_weights(experiment, model_md5)
    if run is None:
        return None
    store = client()
    present = {a.path for a in store.list_artifacts(run.info.run_id)}
    missing = {name: path for name, path in figures.items() if name not in present}
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path in missing.items():
                shutil.copyfile(path, Path(tmp) / name)
            store.log_artifacts(run.info.run_id, tmp)
    return run.info.run_id


def metric_history(run_id: str, key: str) -> list[float]:
    """A run's per-epoch values of one metric, in step order."""
    return [m.value for m in sorted(client().get_metric_history(run_id, key), key=lambda m: m.step)]


def run_for_model(experiment: str, model: str, model_md5: str) -> str:
    """The id of the run holding these weights; when the store lost it (deleted, or the
    outputs came from DVC's run-cache), a new run tagged evaluation_only, and we say so."""
    run = run_of_weights(experiment, model_md5)
    if run is not None:  # the training run, else the evaluation-only run an earlier evaluation made
        return run.info.run_id
    log.warning("no MLflow run holds %s with model_md5 %s; logging to a new evaluation-only run",
                model, model_md5)
    new = client().create_run(experiment_id(experiment), run_name=f"{model} · evaluation only",
                              tags={"model_md5": model_md5, "evaluation_only": "true", **made_from()})
    client().set_terminated(new.info.run_id)
    return new.info.run_id


def log_evaluation(experiment: str, model: str, model_md5: str, metrics: dict[str, dict],
                   datasets: dict[str, object], per_class: dict) -> str:
    """Add evaluation to the model's run without reopening it: metrics per set, linked to the
    set's dataset and to the logged model (so the Models tab compares by them), and per-class
    accuracy; then move `champion` to this version when it is the best so far."""
    run = TrackedRun(client(), run_for_model(experiment, model, model_md5))
    outputs = run.client.get_run(run.run_id).outputs
    model_id = outputs.model_outputs[0].model_id if outputs and outputs.model_outputs else None
    run.log_inputs(list(datasets.values()), "evaluation")
    for set_name, values in metrics.items():
        run.log_metrics({f"{set_name}_{k}": v for k, v in values.items()}, model_id=model_id, dataset=datasets[set_name])
    run.log_dict(per_class, "per_class_acc.json")
    if model_id is not None:
        promote(model_name(experiment, model))
    return run.run_id


def reports_experiment(dataset_name: str) -> str:
    """Where report runs go: beside the models' experiment, not in it, so its runs table
    compares models only."""
    return f"{dataset_name}-reports"


def log_report(dataset_name: str, files: list[Path], tags: dict) -> str:
    """A run of its own for one drawing of the report (figures that span models and the page),
    so no finished run of a model is ever changed by a later pipeline run."""
    store = client()
    run = store.create_run(experiment_id(reports_experiment(dataset_name)),
                           run_name=run_label("report"), tags=tags)
    try:
        for path in files:
            store.log_artifact(run.info.run_id, str(path), "figures" if path.suffix == ".png" else None)
    except BaseException:
        store.set_terminated(run.info.run_id, "FAILED")
        raise
    store.set_terminated(run.info.run_id)
    return run.info.run_id


def get_run(run_id: str):
    """A run by id; MnistflowError, one line, when the store lacks it."""
    try:
        return client().get_run(run_id)
    except errors() as exc:
        raise MnistflowError(f"no MLflow run {run_id!r} in {tracking_uri()}: {exc.message}") from None


def download(run_id: str, artifact: str, dest: str) -> str:
    return client().download_artifacts(run_id, artifact, dest)
