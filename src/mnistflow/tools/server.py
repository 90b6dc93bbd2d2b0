"""A team MLflow tracking server: MLflow's basic-auth app over a PostgreSQL cluster of its own
(under the server folder, run as an unprivileged user, never the system's cluster), artifacts
served through the server.

    mnistflow server start [--dir .server] [--host 127.0.0.1] [--port 5050]
    mnistflow server stop [--dir .server]

The admin password comes from MNISTFLOW_ADMIN_PASSWORD, else from <dir>/admin-password, which
`start` generates (mode 600) the first time; there is no default. Artifacts go to
<dir>/artifacts, or to MNISTFLOW_ARTIFACTS: s3://<bucket>/<prefix> with the server's credentials in
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (MLFLOW_S3_ENDPOINT_URL for an S3-compatible store), the
bucket checked before anything starts; clients need no S3 credentials. A checked password is cached for
MNISTFLOW_AUTH_CACHE_SECONDS (60; 0: MLflow's default, a hash check per request). PostgreSQL listens on a Unix socket
in <dir>/run, reachable by its owner alone, and on TCP at the server's host and port + 1 for one
database only: `optuna`, where `mnistflow tune` keeps its studies, for the role `optuna` with the
password in <dir>/optuna-password (generated, mode 600), so tune processes on any machine that
reaches the server fill one study (docs/search.md).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mnistflow.core.errors import MnistflowError, run_stage
from mnistflow.cli import Parser

# Every `mlflow server` we start: without MLflow's job runner (Huey consumers for GenAI jobs,
# which this project never submits): eight processes less, and about 20 s less CPU at each start
# on 2 cores (bench/ui_start.py). A public setting of MLflow's (mlflow.environment_variables).
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

STUDY_STORAGE = "MNISTFLOW_TUNE_STORAGE"  # the Optuna storage URL `mnistflow tune` uses, over tune.storage

ADMIN = "admin"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise MnistflowError("PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)")


def _db_user() -> str | None:
    """PostgreSQL refuses to run as root: there, the cluster belongs to an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise MnistflowError("running as root, and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _cluster(folder: Path, user: str | None) -> tuple[Path, Path]:
    """The cluster's data folder and socket folder: in the server folder, unless PostgreSQL's user
    cannot reach it (a repo in root's own home, mode 700): then in a folder of its own under
    /var/tmp, named after the server folder and recorded in it (`pg-location`)."""
    record = folder / "pg-location"
    if record.exists():
        base = Path(record.read_text().strip())
    elif user and subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(folder)]).returncode != 0:
        base = Path("/var/tmp") / f"mnistflow-pg-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"
        record.write_text(f"{base}\n")
        print(f"{user} cannot reach {folder}: the PostgreSQL cluster is in {base}", flush=True)
    else:
        base = folder
    if base != folder:
        base.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(base, user)
    return base / "pg", base / "run"


def _as(user: str | None, *cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    argv = [str(c) for c in cmd]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise MnistflowError(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}".rstrip())
    return proc


def _secret(path: Path) -> str:
    """A random secret kept in `path` (mode 600), made the first time."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def admin_password(folder: Path) -> str:
    return os.environ.get("MNISTFLOW_ADMIN_PASSWORD") or _secret(folder / "admin-password")


# Who may connect: the owner through the socket (mode 700), and over TCP only the study database's role.
PG_HBA = "local all all trust\nhost optuna optuna all scram-sha-256\n"


def study_port(port: int) -> int:
    return port + 1


def start(folder: Path, host: str, port: int, timeout: float = 120) -> str:
    folder = folder.resolve()
    if (folder / "mlflow.pid").exists():
        try:
            os.killpg(int((folder / "mlflow.pid").read_text()), 0)
            raise MnistflowError(f"a server from {folder} is running (pid file mlflow.pid): make server-stop first")
        except ProcessLookupError:  # it died or was killed: start it again, over the same database
            (folder / "mlflow.pid").unlink()
    artifacts = os.environ.get("MNISTFLOW_ARTIFACTS") or str(folder / "artifacts")
    if artifacts.startswith("s3://"):  # checked before anything starts: MLflow would fail at the first upload
        from mnistflow.tools.s3 import check_bucket
        check_bucket(artifacts, f"MNISTFLOW_ARTIFACTS ({artifacts})", {
            "credentials": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the server starts",
            "endpoint": "set MLFLOW_S3_ENDPOINT_URL to your S3 server's URL (unset for AWS)",
            "bucket": "set MNISTFLOW_ARTIFACTS to s3://<bucket>/<prefix>"}, endpoint=os.environ.get("MLFLOW_S3_ENDPOINT_URL"))
    pg, user = _pg_bin(), _db_user()
    folder.mkdir(parents=True, exist_ok=True)
    data, run = _cluster(folder, user)
    for path in (data, run):
        path.mkdir(mode=0o700, exist_ok=True)
        if user:
            shutil.chown(path, user)
    if not (data / "PG_VERSION").exists():
        _as(user, pg / "initdb", "-D", data, "-A", "trust", "-U", "mlflow", "--no-instructions")
    _as(user, "tee", data / "pg_hba.conf", input=PG_HBA)  # initdb's trusts every local TCP user
    pg_port = str(study_port(port))
    # A cluster still running (the MLflow server alone died or was stopped): start the server only.
    status = [str(pg / "pg_ctl"), "-D", str(data), "status"]
    if subprocess.run(["runuser", "-u", user, "--", *status] if user else status, capture_output=True).returncode != 0:
        _as(user, pg / "pg_ctl", "-D", data, "-l", data / "server.log", "-w", "start",
            "-o", f"-c listen_addresses='{host}' -c port={pg_port} -c unix_socket_directories='{run}' "
                  "-c unix_socket_permissions=0700 -c password_encryption=scram-sha-256")
    sql = [pg / "psql", "-h", run, "-p", pg_port, "-U", "mlflow", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc"]
    for db in ("mlflow", "mlflow_auth", "optuna"):
        if not _as(user, *sql, f"select 1 from pg_database where datname = '{db}'").stdout.strip():
            _as(user, pg / "createdb", "-h", run, "-p", pg_port, "-U", "mlflow", db)
    verb = "alter" if _as(user, *sql, "select 1 from pg_roles where rolname = 'optuna'").stdout.strip() else "create"
    _as(user, *sql, f"{verb} role optuna login password '{_secret(folder / 'optuna-password')}'")
    _as(user, *sql, "alter database optuna owner to optuna")
    store = f"postgresql+psycopg://mlflow@/mlflow?host={run}&port={pg_port}"
    auth = folder / "basic_auth.ini"
    fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = postgresql+psycopg://mlflow@/mlflow_auth?host={run}&port={pg_port}\n"
                f"admin_username = {ADMIN}\nadmin_password = {admin_password(folder)}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # A password check is a deliberately slow hash (scrypt, ~0.1 s of CPU): off, every
                # request pays it. Cached, a changed password reaches the other worker within the TTL.
                f"auth_cache_ttl_seconds = {os.environ.get('MNISTFLOW_AUTH_CACHE_SECONDS', '60')}\n")
    env = {**os.environ, **NO_JOB_RUNNER, "MLFLOW_AUTH_CONFIG_PATH": str(auth), "MLFLOW_DISABLE_TELEMETRY": "true",
           # the UI's CSRF protection signs with it: the same across restarts
           "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(folder / "flask-secret")}
    with open(folder / "mlflow.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                                 "--backend-store-uri", store, "--serve-artifacts", "--artifacts-destination",
                                 artifacts, "--host", host, "--port", str(port), "--workers", "2"],
                                env=env, stdout=log, stderr=log, start_new_session=True)
    (folder / "mlflow.pid").write_text(f"{proc.pid}\n")
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(folder)
            raise MnistflowError(f"mlflow server exited with {proc.returncode}; see {folder / 'mlflow.log'}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return url
        except OSError:
            time.sleep(0.5)
    stop(folder)
    raise MnistflowError(f"mlflow server did not answer at {url} in {timeout:.0f} s; see {folder / 'mlflow.log'}")


def stop(folder: Path) -> None:
    """Stop what `start` started: the server's process group by its PID, then the cluster."""
    folder = folder.resolve()
    pid_file = folder / "mlflow.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink()
    data = Path((folder / "pg-location").read_text().strip()) / "pg" if (folder / "pg-location").exists() \
        else folder / "pg"
    if (data / "postmaster.pid").exists():
        _as(_db_user(), _pg_bin() / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")


def how_to_use(url: str, folder: Path, password_from_env: bool) -> str:
    """The lines `start` prints: the password named where it is (the variable, else the file)."""
    source = "MNISTFLOW_ADMIN_PASSWORD" if password_from_env else folder / "admin-password"
    password = '"$MNISTFLOW_ADMIN_PASSWORD"' if password_from_env else f'"$(cat {folder / "admin-password"})"'
    host, _, port = url.removeprefix("http://").rpartition(":")
    return (f"MLflow server at {url} (admin password: {source}). To use it:\n"
            f"  export MLFLOW_TRACKING_URI={url} MLFLOW_TRACKING_USERNAME={ADMIN} MLFLOW_TRACKING_PASSWORD={password}\n"
            "and for `mnistflow tune`, its studies in the server's PostgreSQL:\n"
            f"  export {STUDY_STORAGE}=\"postgresql+psycopg://optuna:$(cat {folder / 'optuna-password'})@{host}:"
            f"{study_port(int(port))}/optuna\"")


def main(argv: list[str] | None = None, prog: str = "mnistflow server") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=Path(".server"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.dir)
        print(f"stopped the server and the database of {args.dir}")
        return
    url = start(args.dir, args.host, args.port)
    print(how_to_use(url, args.dir, bool(os.environ.get("MNISTFLOW_ADMIN_PASSWORD"))))

if __name__ == "__main__":
    run_stage(main)
