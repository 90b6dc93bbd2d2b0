"""Shared fixtures: tiny learnable IDX datasets and a copy of the project in a temp git repo.

What every end-to-end project starts with is paid once per state of the checkout, by whichever
test run and xdist worker asks first (`built_once`): the tiny data, an empty MLflow store whose
schema MLflow has migrated (about 10 s for each fresh mlflow.db), the project in a git repo
after `dvc repro preprocess` (its DVC cache and run-cache too: `template`), and the same after a
whole `dvc repro` (`trained`).
`make_project` copies one of them; a copy of the template's first `dvc repro` then starts at
check_params (its params differ) and trains, with download and preprocess up to date."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import yaml
from filelock import FileLock

from mnistflow.tools.reprocheck import copy_pipeline, shrink, user_env
from mnistflow.tracking import relocate_store
from mnistflow.data.synthetic import write_idx

ROOT = Path(__file__).resolve().parents[1]
# Two xdist workers share the cores, each running stages with numerics.threads threads: OpenMP
# threads that spin while they wait would take the CPU the other worker's stages need (2x slower
# on 2 cores, bench/shared_cpu.py). How threads wait changes no result. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SECRET = "s3cr3t-token-in-the-environment"  # in every pipeline's environment; must never reach MLflow


def checkout_key() -> str:
    """The checkout as the fixtures see it: every file git would commit (tracked or new, not
    ignored), by path and content, and this Python."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    digest = hashlib.sha256(sys.executable.encode())
    for name in sorted(f for f in files if f and (ROOT / f.decode()).is_file()):
        digest.update(name + b"\0" + (ROOT / name.decode()).read_bytes())
    return digest.hexdigest()[:16]


def fixture_home() -> Path:
    """Where built_once keeps what it builds for this checkout: one folder per checkout_key,
    outside the checkout (where DVC and git commands run in it would meet the projects' own
    repos). Other checkouts' folders unused for a day are removed."""
    built = Path(tempfile.gettempdir()) / f"mnistflow-fixtures-{os.getuid()}"
    home = built / checkout_key()
    home.mkdir(parents=True, exist_ok=True)
    os.utime(home)  # in use
    for other in built.iterdir():
        if other != home and time.time() - other.stat().st_mtime > 86400:
            shutil.rmtree(other, ignore_errors=True)
    return home


BUILT = fixture_home()  # here, as each xdist worker starts: before any test runs


def built_once(name: str, build) -> Path:
    """`build(path)` once for this checkout, by the first test run and xdist worker to ask; the
    others wait for it and share what it built (which nobody may change: tests copy it). Kept
    between test runs while the checkout is unchanged: `make test-slow` after `make test`, as CI
    runs them, or a test run again, starts from what the first built; any edit builds afresh."""
    path, done = BUILT / name, BUILT / f"{name}.done"
    with FileLock(BUILT / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed build left
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def tiny_mirror() -> Path:
    return built_once("mirror", lambda path: write_idx(path / "mnist")) / "mnist"


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess:
    # Output through files, not pipes: a daemon the command forks (`dvc queue start`'s workers)
    # keeps them open, and reading a pipe to its end would wait for the daemon as well.
    # A timeout on every command: a hung subprocess must fail its test, not stall CI.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, timeout=timeout)
        out.seek(0)
        err.seek(0)
        proc.stdout, proc.stderr = out.read(), err.read()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def pipeline_env() -> dict:
    """The environment a user's shell would have: the venv first on PATH, no overrides."""
    return {**user_env(), "API_TOKEN": SECRET}



def dvc(project: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `project`, with the installed DVC and a user's environment."""
    return run([sys.executable, "-m", "dvc", *args], project, env or pipeline_env(), check=check)

@pytest.fixture(scope="session")
def migrated_db() -> Path:
    """An empty MLflow store whose schema MLflow has migrated: copy it where a test needs a store."""
    def build(path: Path) -> None:
        from mlflow import MlflowClient

        path.mkdir()
        MlflowClient(f"sqlite:///{path / 'mlflow.db'}").search_experiments()  # runs the migrations
    return built_once("store", build) / "mlflow.db"


@pytest.fixture(scope="session")
def template(tiny_mirror, migrated_db) -> Path:
    """The project on the tiny data after `dvc repro preprocess`, with a migrated empty store."""
    def build(project: Path) -> None:
        new_project(project, tiny_mirror)
        run([sys.executable, "-m", "dvc", "repro", "preprocess"], project, pipeline_env())
        (project / "mlruns").mkdir()
        shutil.copy(migrated_db, project / "mlruns" / "mlflow.db")
    return built_once("template", build)  # dvc.lock untracked, as in a fresh clone


def build_trained(template: Path):
    # Taken now, not in the builder thread, where a test may meanwhile change os.environ. The
    # tiny runs take seconds: sampled often, so that they hold system metrics (MLflow's monitor
    # drops the samples of the last unfinished interval).
    env = {**pipeline_env(), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}

    def build(project: Path) -> None:
        make_project(project, template, mlp={"epochs": 2})
        out = run([sys.executable, "-m", "dvc", "repro"], project, env).stdout
        (project.parent / "trained.out").write_text(out)
    return build


@pytest.fixture(scope="session")
def trained(template) -> tuple[Path, str]:
    """The template after a whole `dvc repro` (mlp trained 2 epochs; dvc.lock uncommitted), and
    what that `dvc repro` printed: copy it with `make_project(dest, trained[0])`."""
    project = built_once("trained", build_trained(template))
    return project, (project.parent / "trained.out").read_text()


@pytest.fixture(scope="session", autouse=True)
def trained_in_the_background(request):
    """Start building `trained` at once, beside the first tests, when any test of the run uses
    it: else one worker builds it (about a minute) while the other waits for it, a core idle."""
    if not any("trained" in item.fixturenames for item in request.session.items):
        yield
        return
    try:
        template = request.getfixturevalue("template")
    except Exception:  # noqa: BLE001  (the tests that use it fail with its error; the others run)
        yield
        return
    builder = threading.Thread(target=built_once, args=("trained", build_trained(template)),
                               daemon=True)
    builder.start()  # a failed build leaves no .done: the fixture builds again and fails with its error
    yield
    builder.join()


def make_project(dest: Path, template: Path, **train_overrides) -> Path:
    """A copy of `template` (or `trained`) in `dest` (its git repo, DVC cache and MLflow store,
    repointed here), with these settings per model: `make_project(dest, template, mlp={"epochs": 2})`."""
    shutil.copytree(template, dest, symlinks=True, dirs_exist_ok=True)
    relocate_store(dest / "mlruns" / "mlflow.db")  # as our next stage would; tests read it first
    if train_overrides:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        for key, value in train_overrides.items():
            params["train"][key].update(value)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "commit", "-q", "-am", "settings under test"], dest, pipeline_env())
    return dest


def new_project(dest: Path, mirror: Path) -> Path:
    """Copy the project into `dest` as a fresh git repo, with params shrunk for tiny data."""
    copy_pipeline(ROOT, dest)
    params = shrink(yaml.safe_load((dest / "params.yaml").read_text()), mirror, epochs=1)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env()
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "project under test"], dest, env)
    return dest


def commit(project: Path, message: str) -> None:
    """Commit whatever the workspace holds, also nothing: tests run in any order, and an earlier
    one may have committed already."""
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], project, pipeline_env())


def add_make(project: Path) -> Path:
    """Let `make TARGET` run in a test project as in a clone: its Makefile over this checkout's
    set-up (venv, offline plots page)."""
    names = ("Makefile", "requirements.txt", "requirements-test.txt", "pyproject.toml")
    for name in names:
        shutil.copy2(ROOT / name, project / name)
    for made_by_setup in (".venv", ".plots"):
        (project / made_by_setup).symlink_to(ROOT / made_by_setup)
    with open(project / ".git/info/exclude", "a") as exclude:  # as in a clone, where git tracks them
        exclude.write("".join(f"/{name}\n" for name in (*names, ".venv", ".plots")))
    return project


@contextmanager
def background(cmd: list[str], cwd: Path, env: dict, url: str, log: Path, timeout: float = 120) -> Iterator[Path]:
    """`cmd` in the background (a server) until `url` answers, its output in `log`; stopped with its
    process group when the block ends."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{' '.join(cmd)} did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_params(project: Path, key: str, value) -> None:
    """Set one dotted key of the project's params.yaml (`train.cnn.lr`), as `dvc exp run -S` would."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def runs_of(project: Path, experiment: str = "mnist", db: Path | None = None) -> list:
    """The runs of one experiment in the project's MLflow store (or the sqlite file `db`), oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db or project / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def stages_run(dvc_stdout: str) -> list[str]:
    """The stages a `dvc repro` ran, in order."""
    return re.findall(r"Running stage '([^']+)'", dvc_stdout)


def pending(status_json: str) -> dict:
    """`dvc status --json`: what a repro would run for, and why ({} when up to date)."""
    return json.loads(status_json)


needs_postgres = pytest.mark.skipif(
    not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and not shutil.which("initdb"),
    reason="PostgreSQL's server binaries are not installed (make test installs Debian's postgresql "
           "where it runs as root with apt-get)")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server on loopback: moto's, as DVC's own S3 plugin is tested, checking every
    request's credentials (its IAM on): a user allowed S3, its access key, and the bucket `team`.
    `env`: what a user exports to reach it as that user."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError:
        pytest.skip("moto[server] is not installed (requirements-test.txt)")
    port, log = free_port(), tmp_path_factory.mktemp("s3") / "moto.log"
    # Authentication starts after the first 3 requests: the ones that make the user, its policy and its key.
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        where = {"endpoint_url": url, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **where)
        iam.create_user(UserName="team")
        iam.put_user_policy(UserName="team", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="team")["AccessKey"]
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], **where)
        client.create_bucket(Bucket="team")
        yield SimpleNamespace(url=url, bucket="team", env=env, client=client,
                              keys=lambda prefix: [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
                                  Bucket="team", Prefix=prefix) for o in page.get("Contents", [])])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
