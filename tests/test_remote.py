"""The committed baseline and the DVC remotes (a folder, and SSH to a real sshd on loopback): a
fresh clone pulls every output instead of retraining, CI's lock check names a stage whose code
changed, a wrong Python gets one line."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient

from conftest import add_make, dvc, free_port, make_project, pending, pipeline_env, run, set_params, stages_run
from mnistflow.tracking import file_md5

pytestmark = pytest.mark.e2e
LOCK_CHECK = [sys.executable, "-m", "mnistflow.tools.lockcheck"]



def env_with_src(repo) -> dict:
    return {**pipeline_env(), "PYTHONPATH": str(repo / "src")}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, trained):
    """A project whose pipeline ran, dvc.lock committed, every output pushed to a local remote."""
    root = tmp_path_factory.mktemp("remote")
    first = make_project(root / "first", trained[0])
    remote = root / "dvc-remote"
    dvc(first, "remote", "modify", "--local", "local", "url", str(remote))
    run(["git", "add", "dvc.lock"], first)
    run(["git", "commit", "-q", "-m", "baseline"], first, pipeline_env())
    dvc(first, "push")
    return first, remote


def clone(first, dest, remote=None):
    run(["git", "clone", "-q", str(first), str(dest)], first.parent)
    if remote:
        dvc(dest, "remote", "modify", "--local", "local", "url", str(remote))
    return dest


def assert_complete_copy(first, second):
    """`second`, a clone with only what it pulled, has everything `first` ran and nothing to run."""
    assert pending(dvc(second, "status", "--json").stdout) == {}
    assert stages_run(dvc(second, "repro").stdout) == []
    assert run(["git", "status", "--porcelain"], second).stdout == ""
    for model in ("mlp", "cnn", "lenet"):
        assert file_md5(second / f"models/{model}.pt") == file_md5(first / f"models/{model}.pt")
    assert (second / "reports/index.html").read_bytes() == (first / "reports/index.html").read_bytes()


def test_a_fresh_clone_pulls_every_output_and_has_nothing_to_run(pushed, tmp_path):
    first, remote = pushed
    second = clone(first, tmp_path / "second", remote)
    assert not (second / ".dvc/cache").exists()  # an empty cache: everything comes from the remote
    dvc(second, "pull")
    assert_complete_copy(first, second)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """Debian's OpenSSH server on loopback with its own config and generated keys: key login
    only, SFTP, as the user running the tests. A client HOME whose known_hosts pins its host key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(binary, os.X_OK):
        pytest.skip("no sshd: Debian's openssh-server (`make test` installs it where it is root)")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], home)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1:{port}
HostKey {home}/host_key
PidFile {home}/sshd.pid
AuthorizedKeysFile {home}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation folder, made by Debian's service
    with open(home / "sshd.log", "w") as log:
        proc = subprocess.Popen([binary, "-D", "-e", "-f", str(home / "sshd_config")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not come up:\n{(home / 'sshd.log').read_text()}")
            time.sleep(0.2)
        client = home / "client"
        (client / ".ssh").mkdir(parents=True)
        host_key = (home / "host_key.pub").read_text().split()[:2]
        (client / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
        yield SimpleNamespace(url=f"ssh://{getpass.getuser()}@127.0.0.1:{port}", key=home / "client_key",
                              env={**pipeline_env(), "HOME": str(client)}, log=home / "sshd.log")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def use_ssh_remote(repo, sshd, folder):
    """What a user types for a team's SSH remote (README), kept in this clone's config.local."""
    dvc(repo, "remote", "add", "--local", "--default", "team", f"{sshd.url}{folder}")
    dvc(repo, "remote", "modify", "--local", "team", "keyfile", str(sshd.key))


def test_the_same_round_trip_through_an_ssh_server(pushed, sshd, tmp_path):
    first, local = pushed
    folder = tmp_path / "on-the-server"
    use_ssh_remote(first, sshd, folder)
    try:
        dvc(first, "push", env=sshd.env)
    finally:
        dvc(first, "remote", "remove", "--local", "team")
    assert "Accepted publickey" in sshd.log.read_text()  # through sshd, not the file system
    def stored(remote):
        return sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    assert stored(folder) == stored(local)  # what the folder remote got, file for file
    second = clone(first, tmp_path / "second")
    use_ssh_remote(second, sshd, folder)
    dvc(second, "pull", env=sshd.env)
    assert_complete_copy(first, second)
    wrong = clone(first, tmp_path / "wrong")
    use_ssh_remote(wrong, sshd, folder)
    dvc(wrong, "remote", "modify", "--local", "team", "keyfile", str(sshd.key.with_name("host_key")))
    refused = dvc(wrong, "pull", env=sshd.env, check=False)
    assert refused.returncode != 0 and not (wrong / "models/cnn.pt").exists()
    assert "Traceback" not in refused.stderr and "Permission denied" in refused.stderr, refused.stderr


def s3_credentials(repo, s3, secret=None):
    """A clone's own S3 credentials, in its .dvc/config.local (never committed)."""
    dvc(repo, "remote", "modify", "--local", "team", "access_key_id", s3.env["AWS_ACCESS_KEY_ID"])
    dvc(repo, "remote", "modify", "--local", "team", "secret_access_key", secret or s3.env["AWS_SECRET_ACCESS_KEY"])
    return add_make(repo)


def test_the_same_round_trip_through_s3_and_wrong_credentials_in_one_line(pushed, s3, tmp_path):
    first, _ = pushed
    a = make_project(tmp_path / "a", first)
    # What a team commits (docs/dvc.md): the bucket and the endpoint of its S3-compatible store.
    dvc(a, "remote", "add", "--default", "team", f"s3://{s3.bucket}/dvc")
    dvc(a, "remote", "modify", "team", "endpointurl", s3.url)
    run(["git", "commit", "-q", "-am", "the team's S3 remote"], a, pipeline_env())
    run(["make", "-s", "push"], s3_credentials(a, s3), pipeline_env())
    assert any(key.startswith("dvc/files/md5/") for key in s3.keys("dvc/"))
    b = s3_credentials(clone(a, tmp_path / "b"), s3)
    assert not (b / ".dvc/cache").exists()
    run(["make", "-s", "pull"], b, pipeline_env())
    assert_complete_copy(a, b)

    wrong = s3_credentials(clone(a, tmp_path / "wrong"), s3, secret="not-the-secret")
    refused = run(["make", "-s", "pull"], wrong, pipeline_env(), check=False)
    assert refused.returncode != 0 and not (wrong / "models").exists() and not (wrong / ".dvc/cache").exists()
    assert refused.stderr.splitlines()[0] == (
        f"error: DVC remote 'team' (s3://team/dvc): {s3.url} refused the credentials (SignatureDoesNotMatch): "
        "dvc remote modify --local team access_key_id <key>, and secret_access_key <secret> "
        "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"), refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_lock_check_names_a_stage_whose_code_changed_and_passes_after_dvc_commit(pushed, tmp_path):
    first, _ = pushed
    bare = clone(first, tmp_path / "bare")  # as CI sees it: code and dvc.lock, no data, no outputs
    assert run(LOCK_CHECK, bare, env_with_src(bare)).returncode == 0
    script = first / "stages/evaluate.py"
    original = script.read_text()
    script.write_text(original + "# a change dvc.lock does not record\n")
    try:
        stale = run(LOCK_CHECK, first, env_with_src(first), check=False)
        assert stale.returncode == 1 and "Traceback" not in stale.stderr
        assert "dvc.lock is stale" in stale.stderr
        assert "evaluate@cnn: stages/evaluate.py modified" in stale.stderr
        assert "train@cnn" not in stale.stderr  # only the stages that use it
        dvc(first, "commit", "--force", *(f"evaluate@{m}" for m in ("mlp", "cnn", "lenet")))
        assert run(LOCK_CHECK, first, env_with_src(first)).returncode == 0
    finally:
        script.write_text(original)
        dvc(first, "commit", "--force", *(f"evaluate@{m}" for m in ("mlp", "cnn", "lenet")))


def test_a_stage_run_by_a_python_without_the_dependencies_says_what_to_do(pushed):
    first, _ = pushed
    others = [p for p in (shutil.which("python3"), "/usr/bin/python3") if p and not p.startswith(sys.prefix)]
    bare = next((p for p in others if subprocess.run([p, "-c", "import torch"], capture_output=True).returncode), None)
    if bare is None:
        pytest.skip("no Python without torch on this machine")
    out = run([bare, "stages/check_params.py"], first, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
    assert "lacks torch" in out.stderr and "source .venv/bin/activate" in out.stderr


def test_mnistflow_called_by_its_full_path_runs_stages_with_its_own_python(pushed, tmp_path):
    """`.venv/bin/mnistflow bench` from a shell without the venv: DVC's stage commands call
    `python`, which must be the venv's, not whatever PATH holds."""
    first, _ = pushed
    exe = Path(sys.executable).parent / "mnistflow"
    if not exe.exists():
        pytest.skip("mnistflow is not installed in this Python's environment (make venv installs it)")
    copy = tmp_path / "copy"
    shutil.copytree(first, copy, symlinks=True)
    set_params(copy, "train.mlp.lr", 0.02)  # check_params re-runs: DVC starts its `python`
    out = run([str(exe), "bench", "--no-such-flag"], copy, {**pipeline_env(), "PATH": "/usr/bin:/bin"}, check=False)
    assert "Running stage 'check_params'" in out.stdout and "lacks torch" not in out.stderr, out.stdout + out.stderr
    assert "bench/train_speed.py --no-such-flag failed" in out.stderr  # after `dvc repro preprocess` passed


def test_an_experiment_made_on_one_machine_is_listed_applied_and_up_to_date_on_another(pushed, tmp_path):
    """Two clones of one bare git repo, sharing the DVC remote, stand for two machines: an
    experiment run on A reaches B through `make exp-push` / `make exp-pull`; on B `make exps`
    answers which params gave which accuracy (at 120 columns, in a pipe), `dvc exp apply` gives
    A's outputs, and `dvc repro` runs nothing."""
    first, _ = pushed
    origin, remote = tmp_path / "origin.git", tmp_path / "dvc-remote"  # a DVC remote of their own
    run(["git", "clone", "-q", "--bare", str(first), str(origin)], tmp_path)
    a = add_make(make_project(tmp_path / "a", first))
    run(["git", "remote", "add", "origin", str(origin)], a)
    dvc(a, "remote", "modify", "--local", "local", "url", str(remote))
    run(["make", "-s", "push"], a, pipeline_env())  # main's outputs, as the team's remote holds them
    baseline = {m: json.loads((a / f"reports/eval/{m}.json").read_text())["test"] for m in ("mlp", "cnn", "lenet")}
    dvc(a, "exp", "run", "-S", "train.mlp.lr=0.0000001", "-n", "mlp-lr")  # surely another accuracy
    run(["make", "-s", "exp-push"], a, pipeline_env())

    b = add_make(clone(origin, tmp_path / "b", remote))
    run(["make", "-s", "exp-pull"], b, pipeline_env())
    text = run(["make", "-s", "exps"], b, {**pipeline_env(), "COLUMNS": "120"}).stdout  # a pipe
    md = run([sys.executable, "-m", "mnistflow.tools.exps", "--md"], b, env_with_src(b)).stdout
    assert max(map(len, text.splitlines())) <= 120 and "…" not in text, text
    tables = {block.splitlines()[0]: [line.split() for line in block.splitlines()[1:]] for block in text.split("\n\n")}
    assert list(tables) == ["mlp", "cnn", "lenet"]  # one table per model
    header, _, *rows = tables["mlp"]
    assert header == ["experiment", "lr", "test", "crop22", "crop18"]  # what varied for it, then its accuracy
    by_name = {row[0]: row for row in rows}
    assert by_name["mlp-lr"][1] == "1e-07" and float(by_name["main"][2]) == baseline["mlp"]
    assert float(by_name["mlp-lr"][2]) == json.loads((a / "reports/eval/mlp.json").read_text())["test"]
    for model in ("cnn", "lenet"):  # nothing of theirs varied: their accuracy, the baseline's
        header, _, *rows = tables[model]
        assert header == ["experiment", "test", "crop22", "crop18"]
        assert float({row[0]: row for row in rows}["main"][1]) == baseline[model]
    assert "| experiment | lr | test | crop22 | crop18 |" in md and "**mlp**" in md

    dvc(b, "exp", "apply", "mlp-lr")
    assert stages_run(dvc(b, "repro").stdout) == []
    assert yaml.safe_load((b / "dvc.lock").read_text()) == yaml.safe_load((a / "dvc.lock").read_text())
    for out in [o["path"] for stage in yaml.safe_load((a / "dvc.lock").read_text())["stages"].values()
                for o in stage.get("outs", []) if (a / o["path"]).is_file()]:
        assert file_md5(b / out) == file_md5(a / out), out


def test_restore_pulls_what_the_cache_lacks(pushed, tmp_path):
    first, _ = pushed
    client = MlflowClient(tracking_uri=f"sqlite:///{first / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist")
    (cnn,) = client.search_runs([exp.experiment_id], "params.model = 'cnn'", max_results=1,
                                order_by=["attributes.start_time ASC"])
    md5 = cnn.data.tags["model_md5"]
    cached = first / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.unlink()  # the cache lost it; the remote has it
    env = env_with_src(first)
    run([sys.executable, "-m", "mnistflow.cli", "restore", cnn.info.run_id, str(tmp_path / "restored")], first, env)
    assert file_md5(tmp_path / "restored/models/cnn.pt") == md5
    assert cached.is_file()  # back in the repo's cache
