"""Lineage both ways: what a training run was made from, recorded into MLflow as DVC would
write it into dvc.lock; and, from an MLflow run id, that state restored or described.

    mnistflow lineage RUN_ID
    mnistflow restore RUN_ID DEST
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mnistflow import tracking
from mnistflow.tracking.dvc_internals import default_remote_url, lock_entries
from mnistflow.core.errors import MnistflowError
from mnistflow.core.io import repo_root

log = logging.getLogger(__name__)
LINEAGE_ARTIFACT = "lineage.json"


def record(run) -> None:
    """Into `run` (a tracking.TrackedRun), as one artifact: the stage's lock entries (every dep and out
    with its md5, and the params) and where it ran. Outside DVC (a stage script run by hand)
    there is no stage to describe."""
    stage_name = os.environ.get("DVC_STAGE")
    if not stage_name:
        log.info("not run by DVC: no lineage recorded")
        return
    entries = lock_entries(stage_name, Path.cwd())
    run.log_dict({"stages": entries, "environment": tracking.environment()}, LINEAGE_ARTIFACT)
    log.info("lineage of %s recorded (%d stages)", stage_name, len(entries))


def describe(run_id: str) -> str:
    run, entries, env = _load(run_id)
    tags = run.data.tags
    lines = [f"MLflow run {run_id} ({run.info.run_name}, {run.info.status})",
             f"  git commit   {tags.get('git_commit')} (dirty: {tags.get('git_dirty')})",
             f"  dvc stage    {env.get('dvc_stage')}"]
    if tags.get("dvc_exp_name"):
        lines.append(f"  dvc exp      {tags['dvc_exp_name']} (baseline {env.get('dvc_exp_baseline_rev')})")
    lines.append(f"  model md5    {tags.get('model_md5')}")
    for name, entry in entries.items():
        lines.append(f"  stage {name}")
        for key in ("deps", "outs"):
            for item in entry.get(key, []):
                lines.append(f"    {key[:-1]:4} {item['md5']}  {item['path']}")
        for file, values in entry.get("params", {}).items():
            for key, value in values.items():
                lines.append(f"    param {key} = {json.dumps(value)}  ({file})")
    return "\n".join(lines)


def restore(run_id: str, dest: Path) -> Path:
    """A git worktree at the run's commit, its params and DVC outputs as the run had them
    (checked out from this repo's DVC cache), the model verified against the run's md5."""
    run, entries, _ = _load(run_id)
    tags = run.data.tags
    if "git_commit" not in tags or "model_md5" not in tags:
        raise MnistflowError(f"run {run_id} records no git commit or model md5: it is not a training run")
    root = repo_root()  # the repo we are in: its store holds the run, its cache the outputs
    dest = Path(dest).resolve()
    if dest.exists():
        raise MnistflowError(f"{dest} already exists; give a new directory")
    _cmd(["git", "worktree", "add", "--detach", str(dest), tags["git_commit"]], root)
    stages = {"schema": "2.0", "stages": entries}
    (dest / "dvc.lock").write_text(yaml.safe_dump(stages, sort_keys=False))
    _set_params(dest / "params.yaml", entries)
    _cmd([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], dest)
    checkout = subprocess.run([sys.executable, "-m", "dvc", "checkout", *entries], cwd=dest,
                              capture_output=True, text=True)
    weights = dest / _model_path(entries, run.data.params.get("model", run.info.run_name.split(" · ")[0]))
    if (not weights.exists() or tracking.file_md5(weights) != tags["model_md5"]) and (url := default_remote_url(root)):
        # What the cache lacks, from this repo's default remote (resolved here: a relative URL
        # in the worktree's config would point beside the worktree instead).
        log.info("the DVC cache lacks some outputs of run %s; pulling them from %s", run_id, url)
        _cmd([sys.executable, "-m", "dvc", "remote", "add", "--local", "--force", "restore", url], dest)
        checkout = subprocess.run([sys.executable, "-m", "dvc", "pull", "-r", "restore", *entries], cwd=dest,
                                  capture_output=True, text=True)
    if not weights.exists() or tracking.file_md5(weights) != tags["model_md5"]:
        raise MnistflowError(
            f"neither the DVC cache at {root / '.dvc' / 'cache'} nor a remote holds the model of run {run_id} "
            f"(md5 {tags['model_md5']}); push it from a clone that has it (`make push`; then `dvc pull` in "
            f"{root}) and run this again.\n{checkout.stdout}{checkout.stderr}".rstrip())
    log.info("restored run %s into %s; %s matches the run's md5", run_id, dest, weights.relative_to(dest))
    return dest


def _load(run_id: str) -> tuple[object, dict, dict]:
    """The run, its stages' lock entries and its environment."""
    run = tracking.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download(run_id, LINEAGE_ARTIFACT, tmp)
        except Exception as exc:
            raise MnistflowError(f"run {run_id} has no readable {LINEAGE_ARTIFACT} (not made by a DVC stage, "
                                 f"or its artifacts are gone): {str(exc).splitlines()[0]}") from None
        lineage = json.loads(Path(path).read_text())
    if "stages" not in lineage:  # recorded before the environment was added: stages only
        lineage = {"stages": lineage, "environment": {}}
    return run, lineage["stages"], lineage["environment"]


def _model_path(entries: dict, model: str) -> str:
    return next(o["path"] for e in entries.values() for o in e.get("outs", [])
                if o["path"].endswith(f"{model}.pt"))


def _set_params(path: Path, entries: dict) -> None:
    """Write the values the run used (they may differ from the commit's under `dvc exp run`)."""
    params = yaml.safe_load(path.read_text())
    for entry in entries.values():
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            *parents, last = key.split(".")
            node = params
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _cmd(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MnistflowError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
