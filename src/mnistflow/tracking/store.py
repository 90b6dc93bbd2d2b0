"""Where the MLflow store is, and the one client to it: the repo's sqlite store under mlruns/
(repointed first when the repo moved) or a tracking server (asked first whether it lets us in),
and runs a killed process left RUNNING marked FAILED; and the experiments. What the UI shows of
them (layouts, saved views, links) is `ui`'s, written where a user asks for it, never here.

MLflow is imported on first use (`mlflow_module`), not with this module: a stage that records
nothing pays nothing, and telemetry is switched off before MLflow's import reads it. Its
submodules (data, models, pytorch) are imported by the functions that use them."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType

from mnistflow.core.io import repo_root
from mnistflow.tracking.relocate import relocate_store


@functools.cache
def mlflow_module() -> ModuleType:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read by MLflow's import; no network here
    import logging

    import mlflow
    # It logs every database error with its SQL before raising it; the stage's one line says it.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # Its system-metrics monitor says when it starts and stops, that there is no GPU, and that it
    # stopped when the server did: noise beside the stage's own one line.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    return mlflow


def errors() -> tuple[type[BaseException], ...]:
    """What to catch around MLflow calls: its own exception, not a broad Exception."""
    from mlflow.exceptions import MlflowException
    return (MlflowException,)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` is MLflow's client giving up on a server that stopped answering, once its
    retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7: about 4 minutes of backoff) are spent."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and isinstance(exc.__cause__ or exc.__context__,
                                                           requests.exceptions.RequestException)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def sqlite_path() -> Path | None:
    uri = tracking_uri()
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


def store_exists() -> bool:
    """Whether the store is a server or a sqlite file already there (asking creates nothing)."""
    db = sqlite_path()
    return db is None or db.exists()


def client():
    """The MlflowClient of the store `tracking_uri` names (repointed first if it moved)."""
    return _connect(tracking_uri())


@functools.cache
def _connect(uri: str):
    """Once per store and process: look for a move (sqlite) or ask the server whether it lets
    us in (http), keep one client, and mark FAILED the runs killed processes left RUNNING. So
    whatever next talks to the store (a stage, `mnistflow ui`, `make exps`) reaps them, also
    after DVC restored the killed stage from its run-cache, which runs nothing of ours."""
    from mnistflow.tracking.runs import fail_dead_runs

    db = sqlite_path()
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        relocate_store(db)
    else:
        check_server(uri)
    store = mlflow_module().MlflowClient(uri)
    fail_dead_runs(store)
    return store


def check_server(uri: str | None = None, timeout: float = 10) -> None:
    """A tracking server that does not answer, or refuses our credentials (MLflow's own
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), is one line, at once: MLflow's
    client would retry for minutes and then print a traceback. A sqlite store passes."""
    import base64
    import urllib.error
    import urllib.request

    from mnistflow.core.errors import MnistflowError

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


def experiment_id(name: str) -> str:
    """Get or create the experiment, with its artifacts in an absolute folder under mlruns/ (a
    relative one would resolve inside DVC's temporary experiment copy and be lost)."""
    store = client()
    exp = store.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path()
    location = (db.parent / "artifacts").as_uri() if db else None  # a server decides for itself
    try:
        return store.create_experiment(name, artifact_location=location)
    except errors():  # created meanwhile by a parallel stage
        return store.get_experiment_by_name(name).experiment_id
