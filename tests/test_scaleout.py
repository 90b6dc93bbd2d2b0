"""Faults in the scale-out paths, for real: the stage killed with SIGKILL alone under torchrun,
two torchrun agents as two nodes, a tracking server stopped mid-training, a full disk."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import (ROOT, dvc, free_port, make_project, needs_postgres, pending, pipeline_env, run, runs_of,
                      set_params, stages_run)
from mnistflow.core.io import load_torch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TRAIN = ["stages/train.py", "cnn", "data/processed", "models/cnn.pt", "reports/train/cnn.json",
         "reports/train/cnn.csv"]



def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the workspace but DVC's own scratch space, with its size and mtime."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith((".dvc/tmp/", ".git/")):
            stat = path.stat()
            found[rel] = (stat.st_size, stat.st_mtime_ns)
    return found


def stage_process(parent: psutil.Process, script: str = "stages/train.py") -> psutil.Process:
    """The topmost process under `parent` that runs `script`: the stage process. DVC starts it
    through `$SHELL -c`, and dash (`/bin/sh`, when SHELL is unset) forks rather than execs: the
    script is an argument of its own in the stage's argv, a part of one in the shell's."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in parent.children(recursive=True):
            try:
                if script in proc.cmdline() and script not in proc.parent().cmdline():
                    return proc
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no {script} under {parent.pid}")


def wait_for(stream, text: str) -> str:
    seen = []
    for line in stream:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came:\n{''.join(seen)}")


@pytest.fixture(scope="module")
def project(tmp_path_factory, template):
    # an epoch of about a second: long enough to be killed in the middle
    project = make_project(tmp_path_factory.mktemp("scaleout"), template, cnn={"epochs": 4, "batch_size": 8})
    dvc(project, "repro", "preprocess")
    return project


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_of_the_stage_leaves_no_process_and_writes_nothing(project, nproc):
    """SIGKILL to the stage process alone (the OOM killer's way) mid-epoch: no worker lives on,
    nothing changes in the workspace afterwards, and the next `dvc repro`, which restores the
    stage from DVC's run-cache and so runs no training, leaves no run RUNNING."""
    set_params(project, "train.nproc", nproc)
    dvc(project, "repro", "train@cnn")  # the run-cache now holds this stage with these params
    finished = {r.info.run_id for r in runs_of(project)}

    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "train@cnn"], cwd=project,
                             env=pipeline_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stage = stage_process(psutil.Process(repro.pid))
    wait_for(repro.stderr, "cnn epoch 1/4")  # epoch 1's checkpoint and metrics are written
    tree = [stage, *stage.children(recursive=True)]
    assert len(tree) >= (1 if nproc == 1 else 1 + nproc), [p.cmdline() for p in tree]
    stage.kill()
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, f"still running after the stage was killed: {[(p.pid, p.cmdline()) for p in alive]}"
    repro.stderr.read()
    assert repro.wait(timeout=60) != 0
    before = files(project)
    time.sleep(3)  # an orphan would finish an epoch in this time, and write its checkpoint and metrics
    assert files(project) == before
    assert load_torch(project / "checkpoints/cnn.pt")["epoch"] == 1
    killed = [r for r in runs_of(project) if r.info.run_id not in finished]
    assert [r.info.status for r in killed] == ["RUNNING"]

    again = dvc(project, "repro", "train@cnn")  # nothing of ours runs: DVC restores the stage
    assert "Stage 'train@cnn' is cached - skipping run, checking out outputs" in again.stdout
    assert stages_run(again.stdout) == []
    # Whatever next opens the store reaps: here `make ui`'s first step (a stage would too).
    links = run([sys.executable, "-m", "mnistflow.cli", "links"], project, pipeline_env())
    assert f"MLflow run {killed[0].info.run_id}" in links.stderr and "marked FAILED" in links.stderr
    assert [r.info.status for r in runs_of(project) if r.info.status == "RUNNING"] == []
    assert {r.info.run_id: r.info.status for r in runs_of(project)}[killed[0].info.run_id] == "FAILED"
    set_params(project, "train.nproc", 1)


def server_command(action: str, folder: Path, port: int) -> None:
    """`make server` / `make server-stop`, as a user runs them."""
    run([sys.executable, "-m", "mnistflow.cli", "server", action, "--dir", str(folder), "--port", str(port)],
        folder.parent, {**pipeline_env(), "PYTHONPATH": str(ROOT / "src")}, timeout=300)


def stop_mlflow_only(folder: Path, url: str) -> None:
    """Stop the MLflow server (its process group), not PostgreSQL, and wait until it is gone."""
    pgid = int((folder / "mlflow.pid").read_text())
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder, port = tmp_path_factory.mktemp("team") / ".server", free_port()
    server_command("start", folder, port)
    try:
        yield folder, port, f"http://127.0.0.1:{port}", (folder / "admin-password").read_text().strip()
    finally:
        server_command("stop", folder, port)
        location = folder / "pg-location"
        if location.exists():
            shutil.rmtree(location.read_text().strip(), ignore_errors=True)


@needs_postgres
def test_a_tracking_server_outage_loses_no_metric(server, tmp_path, template, monkeypatch):
    """The MLflow server (not PostgreSQL) stopped mid-training: for 20 s, MLflow's own retries ride
    it out; past their budget, one line, the checkpoint kept, and a re-run resumes the same run to
    a history with no gap and no duplicate step."""
    folder, port, url, password = server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    project = make_project(tmp_path / "project", template, cnn={"epochs": 5, "batch_size": 8})
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": password}
    run([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)

    def train(env, outage: float | None, after_epoch: int = 1):
        """The train stage; the MLflow server stopped once `after_epoch` is logged, for `outage` s
        (None: until the stage ends)."""
        for out in TRAIN[3:]:
            (project / out).unlink(missing_ok=True)  # as DVC does before it runs the stage
        proc = subprocess.Popen([sys.executable, *TRAIN], cwd=project, env=env, stderr=subprocess.PIPE, text=True)
        said = wait_for(proc.stderr, f"cnn epoch {after_epoch}/5")
        stop_mlflow_only(folder, url)
        if outage is not None:
            time.sleep(outage)
            server_command("start", folder, port)
            said += proc.stderr.read()
            code = proc.wait(timeout=600)
        else:
            said += proc.stderr.read()
            code = proc.wait(timeout=600)
            server_command("start", folder, port)
        return code, said

    def history(run_id):
        return sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))

    code, said = train(env, outage=20)
    assert code == 0, said
    (ridden,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert ridden.info.status == "FINISHED" and history(ridden.info.run_id) == [1, 2, 3, 4, 5]

    # Two retries with a 1 s backoff factor: a budget of seconds, which the outage outlasts.
    short = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    code, said = train(short, outage=None, after_epoch=2)
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in said and len(errors) == 1, said
    assert f"the MLflow server at {url} stopped answering" in errors[0] and "checkpoint is kept" in errors[0]
    kept = load_torch(project / "checkpoints/cnn.pt")
    assert kept["epoch"] >= 2 and not (project / "models/cnn.pt").exists()
    assert not [p for p in project.rglob("*.tmp")]

    resumed = run([sys.executable, *TRAIN], project, env)
    assert f"resuming after epoch {kept['epoch']} of 5" in resumed.stderr
    assert kept["run_id"] in resumed.stderr  # the same run, continued
    run_ = client.get_run(kept["run_id"])
    assert run_.info.status == "FINISHED" and history(kept["run_id"]) == [1, 2, 3, 4, 5]
    assert (project / "models/cnn.pt").exists()


def torchrun_node(node: Path, port: int, log: Path, **env) -> subprocess.Popen:
    """One node's agent, as docs/data-parallel.md says to start it, its output in `log`."""
    cmd = [sys.executable, "-m", "mnistflow.cli", "torchrun", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"cnn-{port}", *TRAIN]
    return subprocess.Popen(cmd, cwd=node, env={**pipeline_env(), **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_two_nodes_train_the_bytes_of_one_node_and_stop_together(tmp_path, template):
    """Two torchrun agents, each in its own clone, as two nodes of one process each: the weights
    of `train.nproc: 2` on one node, byte for byte; `dvc commit` on the clone that held rank 0;
    then one agent killed mid-epoch: the other stops at once, in one line, and no worker remains."""
    node0 = make_project(tmp_path / "node0", template, cnn={"epochs": 3, "batch_size": 8})
    node1 = tmp_path / "node1"
    run(["git", "clone", "-q", str(node0), str(node1)], tmp_path)
    nodes = [node0, node1]
    for node in nodes:
        dvc(node, "repro", "preprocess")
    set_params(node0, "train.nproc", 2)
    run([sys.executable, *TRAIN[:3], str(tmp_path / "one-node.pt"), str(tmp_path / "m.json"),
         str(tmp_path / "h.csv")], node0, pipeline_env())
    run(["git", "checkout", "params.yaml"], node0)

    port = free_port()
    # One store both nodes reach, as a team server would be; each machine's use sampled often.
    store = f"sqlite:///{node0 / 'mlruns/mlflow.db'}"
    agents = [torchrun_node(node, port, tmp_path / f"{node.name}.log", MLFLOW_TRACKING_URI=store, MNISTFLOW_NODE=node.name,
                            MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2") for node in nodes]
    assert [a.wait(timeout=300) for a in agents] == [0, 0], [(tmp_path / f"{n.name}.log").read_text() for n in nodes]
    (rank0,) = [node for node in nodes if (node / "models/cnn.pt").exists()]  # rank 0 alone writes
    assert (rank0 / "models/cnn.pt").read_bytes() == (tmp_path / "one-node.pt").read_bytes()
    two_nodes = runs_of(node0)[-1]  # one run, with a series of system metrics per machine, named as its node tag
    assert two_nodes.data.params["world_size"] == "2"
    assert {f"system/node{n}/cpu_utilization_percentage" for n in (0, 1)} <= set(two_nodes.data.metrics)
    dvc(rank0, "commit", "--force", "train@cnn")
    assert "train@cnn" not in pending(dvc(rank0, "status", "--json").stdout)
    lock = yaml.safe_load((rank0 / "dvc.lock").read_text())["stages"]["train@cnn"]
    assert {o["path"]: o["md5"] for o in lock["outs"]}["models/cnn.pt"] == \
        hashlib.md5((rank0 / "models/cnn.pt").read_bytes()).hexdigest()

    for node in nodes:  # long enough to be killed mid-epoch
        set_params(node, "train.cnn.epochs", 30)
        shutil.rmtree(node / "checkpoints", ignore_errors=True)
    for victim in (0, 1):  # the agent that hosts the rendezvous (started first), then the other
        port, logs = free_port(), [tmp_path / f"kill{victim}-{node.name}.log" for node in nodes]
        agents = [torchrun_node(nodes[0], port, logs[0])]
        time.sleep(1)
        agents.append(torchrun_node(nodes[1], port, logs[1]))
        deadline = time.monotonic() + 120
        while "cnn epoch 2/30" not in logs[0].read_text() + logs[1].read_text():
            assert time.monotonic() < deadline and None in [a.poll() for a in agents]
            time.sleep(0.2)
        workers = psutil.Process(agents[1 - victim].pid).children(recursive=True)
        workers += psutil.Process(agents[victim].pid).children(recursive=True)
        agents[victim].kill()
        survivor = agents[1 - victim]
        assert survivor.wait(timeout=60) != 0  # the rendezvous timeout would be 600 s
        gone, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, [p.cmdline() for p in alive]
        said = logs[1 - victim].read_text()
        # One line from each process still standing, no traceback, no torchrun report. With the
        # rendezvous host killed, the survivor's worker and agent race: the worker sees its peer go
        # ("another one is gone"), or its agent sees the rendezvous go first and stops it
        # ("interrupted"), and its own line says why. The other agent killed: the worker alone says it.
        ours = [line for line in said.splitlines() if not line.startswith("mnistflow.")]
        assert "Traceback" not in said, said
        worker, agent = ours[0], ours[1:]
        assert all(line.startswith("error: torchrun's rendezvous failed: ") for line in agent), said
        assert len(agent) <= (victim == 0), said
        assert (worker.startswith("error: training process ") and "another one is gone" in worker
                or worker == "interrupted" and agent), said
        for node in nodes:
            shutil.rmtree(node / "checkpoints", ignore_errors=True)


def mount_tmpfs(path: Path, size_kb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], check=True)


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"mnistflow-mount-probe-{os.getpid()}"
    try:
        mount_tmpfs(probe, 64)
    except (subprocess.CalledProcessError, OSError):
        return False
    subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return True


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def small_disk(tmp_path):
    """Folders of the project made small filesystems of their own (tmpfs with a size limit, which
    `mount -o remount` can grow: space freed without losing what is on it)."""
    if not can_mount():
        pytest.skip("a size-limited filesystem needs root and mount (tmpfs); not available here")
    mounted = []

    def make(folder: Path, free_kb: int) -> None:
        """`folder`, with what it holds, on a filesystem that has `free_kb` KiB left."""
        aside = folder.with_name(folder.name + ".aside")
        if folder.exists():
            folder.rename(aside)
        used = sum(p.stat().st_size for p in aside.rglob("*") if p.is_file()) // 1024 if aside.exists() else 0
        mount_tmpfs(folder, used + free_kb + 64)  # + the pages the files round up to
        mounted.append(folder)
        if aside.exists():
            shutil.copytree(aside, folder, dirs_exist_ok=True)
            shutil.rmtree(aside)

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def grow(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=512m", str(folder)], check=True)


def test_a_full_disk_fails_in_one_line_and_loses_nothing(tmp_path, template, small_disk):
    """ENOSPC while a stage writes its outputs, then while it writes to the MLflow store: one line
    naming what filled, no temporary or half file, the other outputs, the DVC cache and the store's
    earlier runs intact; once space is freed, `dvc repro` completes."""
    project = make_project(tmp_path / "project", template)
    dvc(project, "repro", "train@mlp", "train@cnn")
    cache = digests(project / ".dvc/cache")
    cnn = (project / "models/cnn.pt").read_bytes()

    # 1. The outputs' disk: models/ holds cnn.pt and 16 KiB more; mlp.pt (which DVC removes before
    # it runs the stage) is far bigger.
    (project / "models/mlp.pt").unlink()
    small_disk(project / "models", free_kb=16)
    set_params(project, "train.mlp.epochs", 2)
    out = dvc(project, "repro", "train@mlp", check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in said, said
    assert "error: no space left on device writing models/mlp.pt: nothing of it was written" in said
    assert sorted(p.name for p in (project / "models").iterdir()) == ["cnn.pt"]  # no temporary, no half file
    assert (project / "models/cnn.pt").read_bytes() == cnn and digests(project / ".dvc/cache") == cache
    grow(project / "models")
    dvc(project, "repro", "train@mlp")
    assert "train@mlp" not in pending(dvc(project, "status", "--json").stdout)

    # 2. The MLflow store's disk: 200 KiB left, less than the model it logs.
    store = project / "mlruns"
    earlier = {r.info.run_id for r in runs_of(project)}
    artifacts = digests(store / "artifacts")
    small_disk(store, free_kb=200)
    set_params(project, "train.mlp.epochs", 3)
    out = dvc(project, "repro", "train@mlp", check=False)
    said = out.stdout + out.stderr
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert out.returncode != 0 and "Traceback" not in said and len(errors) == 1, said
    assert f"no space left on device for the MLflow store at sqlite:///{store / 'mlflow.db'}" in errors[0]
    assert "checkpoint is kept" in errors[0]
    assert digests(store / "artifacts") == artifacts  # earlier runs' artifacts whole, none of the new one
    import sqlite3
    with sqlite3.connect(store / "mlflow.db") as db:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    assert earlier <= {r.info.run_id for r in runs_of(project)}
    assert digests(project / ".dvc/cache").items() >= cache.items()
    grow(store)
    dvc(project, "repro", "train@mlp")
    statuses = {r.info.run_id: r.info.status for r in runs_of(project)}
    assert "RUNNING" not in statuses.values() and list(statuses.values())[-1] == "FINISHED"
