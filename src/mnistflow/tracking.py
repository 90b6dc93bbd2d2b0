"""Everything MLflow, and the one module that imports it: where the store is, one run per
trained model (`tracked_run` yields a `TrackedRun` that records it), the registered models and
their aliases, and one run per report the visualize stage draws.

MLflow is imported on first use (`_mlflow`), not with this module: a stage that records
nothing pays nothing, and telemetry is switched off before MLflow's import reads it."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch

from mnistflow import ui
from mnistflow.io import repo_root

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
# What the registered model's page says of its aliases.
ALIAS_RULE = (f"`{CANDIDATE}` is the newest version; `{CHAMPION}` the version with the best test accuracy so far. "
              "Each version's tags say why it got its alias.")
PROCESS_TAG = "process"  # host:pid of the stage that runs it; finds runs a `kill -9` left RUNNING


@functools.cache
def _mlflow() -> ModuleType:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read by MLflow's import; no network here
    import mlflow
    import mlflow.data  # noqa: F401  (submodules the functions below use)
    import mlflow.models  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    return mlflow


def errors() -> tuple[type[BaseException], ...]:
    """What to catch around MLflow calls: its own exception, not a broad Exception."""
    from mlflow.exceptions import MlflowException
    return (MlflowException,)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def _sqlite_path() -> Path | None:
    uri = tracking_uri()
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


def client():
    """The MlflowClient of the store `tracking_uri` names (repointed first if it moved)."""
    return _connect(tracking_uri())


@functools.cache
def _connect(uri: str):
    """Once per store and process: look for a move (sqlite) or ask the server whether it lets
    us in (http), then keep one client."""
    db = _sqlite_path()
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        relocate_store(db)
    else:
        check_server(uri)
    return _mlflow().MlflowClient(uri)


def check_server(uri: str | None = None, timeout: float = 10) -> None:
    """A tracking server that does not answer, or refuses our credentials (MLflow's own
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), is one line, at once: MLflow's
    client would retry for minutes and then print a traceback. A sqlite store passes."""
    import base64
    import urllib.error
    import urllib.request

    from mnistflow.errors import MnistflowError

    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None and password is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials"
            raise MnistflowError(f"the MLflow server at {uri} refused {who} (HTTP {exc.code}): set "
                                 f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        raise MnistflowError(f"the MLflow server at {uri} answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MnistflowError(f"no MLflow server answers at {uri} ({reason}); start it (make server) "
                             f"or unset MLFLOW_TRACKING_URI for the local store") from None


def relocate_store(db: Path) -> int:
    """A store copied or moved with its repo still names the old folder in every artifact
    location (MLflow keeps them absolute). Point those at this folder; say so. Returns the
    number of locations changed."""
    if not db.exists():
        return 0
    here = str(db.parent)
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "experiments" not in tables:
            return 0
        old_roots = set()
        for (location,) in con.execute("select artifact_location from experiments"):
            path = (location or "").removeprefix("file://")
            if path.endswith("/artifacts") and Path(path).parent.name == "mlruns" and \
                    str(Path(path).parent) != here:
                old_roots.add(str(Path(path).parent))
        changed = 0
        for old in old_roots:
            moved = sum(con.execute(f"update {table} set {column} = replace({column}, ?, ?) where {column} like ?",
                                    (old + "/", here + "/", f"%{old}/%")).rowcount
                        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                              ("logged_models", "artifact_location"),
                                              ("model_versions", "storage_location"))
                        if table in tables)
            log.warning("the MLflow store %s was moved here from %s: %d artifact locations now point here",
                        db.parent, old, moved)
            changed += moved
    return changed


def experiment_id(name: str, reports: bool = False) -> str:
    """Get or create the experiment, with its artifacts in an absolute folder under mlruns/ (a
    relative one would resolve inside DVC's temporary experiment copy and be lost) and its saved
    view of the runs table (`ui`). `reports`: the experiment of report runs."""
    store = client()
    exp = store.get_experiment_by_name(name)
    if exp is None:
        db = _sqlite_path()
        location = (db.parent / "artifacts").as_uri() if db else None  # a server decides for itself
        try:
            exp_id = store.create_experiment(name, artifact_location=location)
        except errors():  # created meanwhile by a parallel stage
            exp_id = store.get_experiment_by_name(name).experiment_id
        exp = store.get_experiment(exp_id)
    if exp.tags.get("mlflow.experimentKind") != "custom_model_development":  # what UIs before 3.17 read
        store.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
    if reports:
        ui.set_view(store, exp, ui.REPORTS, "mnistflow: report runs", ui.REPORTS_STATE)
    else:
        ui.set_view(store, exp, ui.HEADLINE, "mnistflow: headline metrics", ui.headline_state())
    return exp.experiment_id


def weights_url(experiment: str, model_md5: str) -> str:
    """A link to the runs that made these weights: a view of their own, the filter inside."""
    exp = client().get_experiment(experiment_id(experiment))
    ui.set_view(client(), exp, ui.weights_view(model_md5), f"mnistflow: runs with weights {model_md5[:8]}",
                ui.headline_state(search=f"tags.model_md5 = '{model_md5}'"))
    return ui.runs_url(exp.experiment_id, ui.weights_view(model_md5))


def made_by() -> str:
    """What made a run: the DVC experiment's name, else the commit (`git describe --dirty`:
    `-dirty` for uncommitted changes)."""
    return os.environ.get("DVC_EXP_NAME") or _git("describe", "--always", "--dirty", "--abbrev=7") or "no git"


def run_label(model: str) -> str:
    """A run's name: the model and what made it, e.g. `cnn · lr-sweep-3` or `cnn · 82d3e34`."""
    return f"{model} · {made_by()}"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state() -> dict[str, str]:
    """The commit of the code, whether the tree had uncommitted changes, and the short `baseline`
    a column shows: the commit a DVC experiment was made from, else that commit."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown", "baseline": "unknown"}
    return {"git_commit": commit, "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
            "baseline": (os.environ.get("DVC_EXP_BASELINE_REV") or commit)[:7]}


def file_md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def run_tags(dataset: str, device: torch.device) -> dict[str, str]:
    """The few tags a user filters by; the rest of what made a run is in its lineage.json."""
    tags = {"dataset": dataset, "device": str(device), **git_state()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def environment() -> dict[str, str]:
    """What else describes where a run ran: recorded in its lineage.json, not as tags."""
    env = {"torch_version": torch.__version__, "mlflow_version": _mlflow().__version__,
           "dvc_root": str(repo_root()), "host": socket.gethostname()}
    for var in ("DVC_STAGE", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            env[var.lower()] = os.environ[var]
    return env


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

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def log_inputs(self, datasets: list, context: str) -> None:
        """Datasets (see `dataset`) as the run's inputs: training, validation or evaluation."""
        from mlflow.entities import DatasetInput, InputTag
        self.client.log_inputs(self.run_id, [
            DatasetInput(d._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]) for d in datasets])

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
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.client.tracking_uri)
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        info = mlflow.models.Model.log(artifact_path=None, name=name, registered_model_name=name,
                                       run_id=self.run_id, **log_model_args(model.cpu().eval(), **served))
        version = info.registered_model_version
        self.client.set_registered_model_alias(name, CANDIDATE, version)
        self.client.set_model_version_tag(name, version, f"{CANDIDATE}_because",
                                          f"the newest version: logged by run {self.client.get_run(self.run_id).info.run_name}")
        self.client.update_registered_model(name, ALIAS_RULE)
        self.client.set_tag(self.run_id, "model_md5", file_md5(weights_path))
        log.info("model %s version %s logged in run %s", name, info.registered_model_version, self.run_id)


@contextmanager
def tracked_run(experiment: str, run_name: str, params: dict, tags: dict,
                run_id: str | None = None) -> Iterator[TrackedRun]:
    """An MLflow run that ends FINISHED, FAILED on an error, or KILLED on an interrupt.
    `run_id` continues that run (a training resumed after a kill) when the store has it.
    Runs that a `kill -9` left RUNNING are marked FAILED first."""
    from mlflow.entities import Param, RunStatus

    exp_id = experiment_id(experiment)
    fail_dead_runs(exp_id)
    store = client()
    if run_id and _run_exists(store, run_id):
        store.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        log.info("MLflow run %s (%s) resumed in %s", run_id, run_name, tracking_uri())
    else:
        # MLflow's context tags (user, source script, git commit), as its own start_run adds them
        from mlflow.tracking.context.registry import resolve_tags
        run_id = store.create_run(exp_id, run_name=run_name, tags=resolve_tags(tags)).info.run_id
        log.info("MLflow run %s (%s) in %s", run_id, run_name, tracking_uri())
    store.set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{os.getpid()}")
    try:
        store.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])  # a resumed run: the same
        yield TrackedRun(store, run_id)
    except KeyboardInterrupt:
        store.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        store.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    store.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _run_exists(store, run_id: str) -> bool:
    try:
        store.get_run(run_id)
        return True
    except errors():
        return False


def fail_dead_runs(exp_id: str) -> None:
    """Mark FAILED the RUNNING runs whose process on this host is gone (killed with -9);
    runs of live processes (parallel `dvc queue` workers) are left alone."""
    host = socket.gethostname()
    for run in client().search_runs([exp_id], "attributes.status = 'RUNNING'"):
        run_host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if run_host == host and pid.isdigit() and not _alive(int(pid)):
            client().set_terminated(run.info.run_id, "FAILED")
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
    with warnings.catch_warnings():  # MLflow registers its local-file source class twice, and says so
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        return _mlflow().data.from_numpy(images.cpu().numpy(), targets=labels.cpu().numpy(), name=name,
                                      source=str(path), digest=file_md5(path)[:8])


def model_name(dataset_name: str, model: str) -> str:
    """The logged and registered model's name: one registered model per dataset and model."""
    return f"{dataset_name}-{model}"


def log_model_args(model: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...], classes: list[str],
                   example: torch.Tensor) -> dict:
    """What `Model.log` gets for the served form of `model` (on the CPU, in eval mode):
    raw uint8 pixels in, standardized inside, class probabilities and names out."""
    example = example.cpu().numpy()  # a batch of 2: torch.export fixes a size-1 batch dimension
    # Naming the requirements skips MLflow's inference of them, a fresh Python process that
    # imports torch again (seconds per model) and picks up unrelated imports such as tqdm.
    from mnistflow import serving
    return {"flavor": serving, "pytorch_model": serving.RawPixelClassifier(model, mean, std).eval(),
            "classes": classes, "input_example": example, "signature": serving.signature(example.shape),
            "pip_requirements": _mlflow().pytorch.get_default_pip_requirements(),
            "metadata": {"classes": classes, "mean": list(mean), "std": list(std),
                         "input": f"uint8 pixels 0-255, shape (N, {', '.join(map(str, example.shape[1:]))})"}}


def find_training_run(experiment: str, model: str, model_md5: str):
    """The latest run that produced these exact weights, found by the md5 tag, so no MLflow
    id ever needs to be written into DVC-tracked outputs. None when the store lacks it."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client().search_runs([exp.experiment_id], max_results=1, filter_string=f"tags.model_md5 = '{model_md5}'",
                                order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def metric_history(run_id: str, key: str) -> list[float]:
    """A run's per-epoch values of one metric, in step order."""
    return [m.value for m in sorted(client().get_metric_history(run_id, key), key=lambda m: m.step)]


def run_for_model(experiment: str, model: str, model_md5: str) -> str:
    """The id of the run holding these weights; when the store lost it (deleted, or the
    outputs came from DVC's run-cache), a new run tagged evaluation_only, and we say so."""
    run = find_training_run(experiment, model, model_md5)
    if run is not None:
        return run.info.run_id
    log.warning("no MLflow run holds %s with model_md5 %s; logging to a new evaluation-only run",
                model, model_md5)
    new = client().create_run(experiment_id(experiment), run_name=f"{model} · evaluation only",
                              tags={"model_md5": model_md5, "evaluation_only": "true", **git_state()})
    client().set_terminated(new.info.run_id)
    return new.info.run_id


def log_evaluation(experiment: str, model: str, model_md5: str, metrics: dict[str, dict],
                   datasets: dict[str, object], figures: dict, per_class: dict) -> str:
    """Add evaluation to the model's run without reopening it: metrics per set, linked to the
    set's dataset and to the logged model (so the Models tab compares by them), figures and
    per-class accuracy; then move `champion` to this version when it is the best so far."""
    run = TrackedRun(client(), run_for_model(experiment, model, model_md5))
    outputs = run.client.get_run(run.run_id).outputs
    model_id = outputs.model_outputs[0].model_id if outputs and outputs.model_outputs else None
    run.log_inputs(list(datasets.values()), "evaluation")
    for set_name, values in metrics.items():
        run.log_metrics({f"{set_name}_{k}": v for k, v in values.items()}, model_id=model_id, dataset=datasets[set_name])
    for name, fig in figures.items():
        run.log_figure(fig, name)
    run.log_dict(per_class, "per_class_acc.json")
    if model_id is not None:
        promote(model_name(experiment, model), run.run_id, metrics["test"]["acc"])
    return run.run_id


def promote(name: str, run_id: str, test_acc: float) -> None:
    """Point `champion` at the version of `run_id` when its test accuracy beats the champion's."""
    store = client()
    versions = store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return
    version = max(versions, key=lambda v: int(v.version))
    with _registry_lock():  # parallel `dvc queue` workers must not both win
        try:
            champion = store.get_model_version_by_alias(name, CHAMPION)
            best = store.get_run(champion.run_id).data.metrics.get("test_acc", float("-inf"))
        except errors():
            champion, best = None, float("-inf")
        if champion is not None and champion.version == version.version:
            return
        if test_acc > best:
            store.set_registered_model_alias(name, CHAMPION, version.version)
            before = f"{best:.4f} of version {champion.version}" if champion else "no champion before"
            store.set_model_version_tag(name, version.version, f"{CHAMPION}_because",
                                        f"the best test accuracy so far: {test_acc:.4f} (over {before})")
            log.info("%s version %s (test_acc %.4f) is the new %s", name, version.version, test_acc, CHAMPION)
        else:
            log.info("%s stays at version %s (test_acc %.4f >= %.4f)", CHAMPION, champion.version, best, test_acc)


@contextmanager
def _registry_lock() -> Iterator[None]:
    db = _sqlite_path()
    if db is None:  # a tracking server: no shared folder to lock in
        yield
        return
    with open(db.parent / ".registry.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def reports_experiment(dataset_name: str) -> str:
    """Where report runs go: beside the models' experiment, not in it, so its runs table
    compares models only."""
    return f"{dataset_name}-reports"


def log_report(dataset_name: str, files: list[Path], tags: dict) -> str:
    """A run of its own for one drawing of the report (figures that span models and the page),
    so no finished run of a model is ever changed by a later pipeline run."""
    store = client()
    run = store.create_run(experiment_id(reports_experiment(dataset_name), reports=True),
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
    from mnistflow.errors import MnistflowError
    try:
        return client().get_run(run_id)
    except errors() as exc:
        raise MnistflowError(f"no MLflow run {run_id!r} in {tracking_uri()}: {exc.message}") from None


def download(run_id: str, artifact: str, dest: str) -> str:
    return client().download_artifacts(run_id, artifact, dest)


def main() -> None:
    """`python -m mnistflow.tracking [DATASET]`: repair a moved store, print where to look."""
    import sys

    names = sys.argv[1:] or [e.name for e in client().search_experiments() if e.name != "Default"]
    for name in names:
        exp = client().get_experiment_by_name(name)
        if exp is None:
            continue
        reports = name.endswith("-reports")
        experiment_id(name, reports=reports)  # its view, also in a store from before the views
        if reports:
            print(f"{name}: {ui.runs_url(exp.experiment_id, ui.REPORTS)}")
        else:
            print(f"{name}: {ui.runs_url(exp.experiment_id)}")
            print(f"{name} charts: {ui.runs_url(exp.experiment_id, charts=True)}")
    print(ui.HOME_PAGE_HINT)


if __name__ == "__main__":
    from mnistflow.errors import run_stage

    run_stage(main)
