"""The contract of each DVC internal the project uses (src/mnistflow/tracking/dvc_internals.py), held
against the installed DVC on a real two-stage repo: an upgrade that changes one fails here."""
from __future__ import annotations

import subprocess

import yaml

from conftest import dvc
from mnistflow.tracking.dvc_internals import default_remote_url, lock_entries, remote_config



def test_lock_entries_are_what_dvc_writes_into_dvc_lock_and_the_remote_url_is_resolved(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)  # as a stage runs: in its repo
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    (repo / "params.yaml").write_text("a: 1\nb: {c: 2}\n")
    (repo / "in.txt").write_text("input\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "first": {"cmd": "cp in.txt mid.txt", "deps": ["in.txt"], "params": ["a"], "outs": ["mid.txt"]},
        "second": {"cmd": "cat mid.txt mid.txt > out.txt", "deps": ["mid.txt"], "params": ["b.c"],
                   "outs": ["out.txt"]}}}))
    dvc(repo, "repro", "-q")
    written = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock_entries("second", repo) == written  # the stage and every stage upstream of it
    assert list(lock_entries("first", repo)) == ["first"]

    assert default_remote_url(repo) is None
    dvc(repo, "remote", "add", "-d", "store", "../remote")  # relative to .dvc/, where the config is
    assert default_remote_url(repo) == str(tmp_path / "remote")
    dvc(repo, "remote", "modify", "--local", "store", "url", str(tmp_path / "elsewhere"))
    assert default_remote_url(repo) == str(tmp_path / "elsewhere")  # this clone's own setting wins
    dvc(repo, "remote", "add", "s3", "s3://bucket/dvc")
    dvc(repo, "remote", "modify", "s3", "endpointurl", "http://127.0.0.1:9")
    dvc(repo, "remote", "modify", "--local", "s3", "secret_access_key", "from-config-local")
    name, conf = remote_config(repo, "s3")  # merged from both files, with DVC's defaults for the rest
    assert name == "s3" and {k: conf[k] for k in ("url", "endpointurl", "secret_access_key")} == {
        "url": "s3://bucket/dvc", "endpointurl": "http://127.0.0.1:9", "secret_access_key": "from-config-local"}
    assert remote_config(repo)[0] == "store"
