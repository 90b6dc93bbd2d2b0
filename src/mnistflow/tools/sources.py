"""`mnistflow sources`: re-read your images (data.dataset: folder) and, when they changed, rewrite
data/source.json, the manifest that check_params writes and download depends on; the next `dvc
repro` then re-runs check_params (its output changed), download and what follows. A folder that
params.yaml names is not a path DVC can hash (its deps are fixed in dvc.yaml), and check_params
runs only when its own inputs change, so `dvc repro` alone does not see new images: `make repro`
runs this first. For a named dataset there is nothing outside the project to re-read.

    mnistflow sources
"""
from __future__ import annotations

import json
from pathlib import Path

from mnistflow.cli import Parser
from mnistflow.core.config import load_config
from mnistflow.core.io import repo_root, write_json
from mnistflow.data.sources import check_source
from mnistflow.models import model_names

MANIFEST = Path("data/source.json")  # check_params's second output (dvc.yaml)


def refresh(root: Path) -> bool:
    """Rewrite the manifest when the images changed since check_params wrote it; whether it did."""
    cfg = load_config(root / "params.yaml", model_names())
    path = root / MANIFEST
    if cfg.data.dataset != "folder" or not path.exists():  # no manifest yet: the first repro writes it
        return False
    manifest = check_source(cfg.data, root)
    if json.loads(path.read_text()) == json.loads(json.dumps(manifest)):
        return False
    write_json(path, manifest)
    return True


def main(argv: list[str], prog: str) -> None:
    Parser(prog=prog, description=__doc__.splitlines()[0]).parse_args(argv)
    if refresh(repo_root()):
        print(f"your images changed: {MANIFEST} rewritten; `dvc repro` re-runs download and what follows")
