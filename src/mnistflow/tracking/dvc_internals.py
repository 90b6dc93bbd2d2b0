"""The DVC internals the project cannot do without, and nowhere else: DVC has no public API (CLI,
`--json` output or `dvc.api`) for either. tests/test_dvc_internals.py holds each to its contract
on the installed DVC, so an upgrade that changes one fails there, not in a user's pipeline.

- `lock_entries`: a stage's dvc.lock entry while the stage still runs (DVC writes dvc.lock only
  after it), for the lineage recorded in MLflow;
- `default_remote_url`, `remote_config`: a remote's settings as DVC merged them from its config
  files (the URL resolved against the file that set it); `dvc remote list` prints only names and
  URLs, as text, and `dvc config` one value at a time."""
from __future__ import annotations

from pathlib import Path


def lock_entries(stage_name: str, root: Path | str = ".") -> dict[str, dict]:
    """dvc.lock entries of `stage_name` and every stage upstream of it, hashed now by DVC
    itself: what DVC will write when the stage ends."""
    from dvc.repo import Repo
    from dvc.stage.serialize import to_single_stage_lockfile

    with Repo(str(root)) as repo:
        entries = {}
        for stage in repo.stage.collect(stage_name, with_deps=True):
            stage.save()
            entries[stage.addressing] = to_single_stage_lockfile(stage)
    return entries


def remote_config(root: Path | str = ".", name: str | None = None) -> tuple[str, dict] | None:
    """The remote `name` (default: the repo's default remote) and its settings, merged from
    .dvc/config and config.local (url, endpointurl, access_key_id, ...); None when there is none."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = name or repo.config["core"].get("remote")
        if not name:
            return None
        if name not in repo.config["remote"]:
            from mnistflow.core.errors import MnistflowError
            raise MnistflowError(f"no DVC remote {name!r} (dvc remote list names them)")
        return name, dict(repo.config["remote"][name])


def default_remote_url(root: Path | str = ".") -> str | None:
    """The URL of the repo's default DVC remote, resolved; None when it has none."""
    found = remote_config(root)
    return found[1]["url"] if found else None
