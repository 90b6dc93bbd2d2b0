"""Where the data comes from, checked before any stage touches an output (check_params): the
folder or mirror params.yaml names is there and holds enough images; and what the download
stage depends on, by content: your images' digests, or the named dataset."""
from __future__ import annotations

from pathlib import Path

from mnistflow.core.config import DataConfig
from mnistflow.core.errors import ConfigError
from mnistflow.data import folder
from mnistflow.data.datasets import DATASETS


def resolve(path: str, root: Path) -> Path:
    """A data.path or data.mirror: absolute, or relative to the project."""
    return Path(root) / Path(path).expanduser()


def check_source(data: DataConfig, root: Path) -> dict:
    """Refuse a source that is not there or too small for data.val_size; return the manifest
    the download stage depends on (the same bytes while the data is the same)."""
    if data.dataset != "folder":
        if data.mirror is not None and not resolve(data.mirror, root).is_dir():
            raise ConfigError(f"data.mirror: {resolve(data.mirror, root)} is not a folder; fix the path, or set it "
                              f"to null for the system copy or a download (none is tried in its place)")
        spec = DATASETS[data.dataset]
        if data.verify:  # unverified data may have any size
            data.val_count(spec.train_size, data.dataset)
        return {"dataset": data.dataset}
    listing = folder.scan(resolve(data.path, root))
    n_train = len(listing.files["train"]) if listing.presplit else len(listing.files["all"]) - round(
        data.test_size * len(listing.files["all"]))
    data.val_count(n_train, str(listing.root))
    return {"dataset": "folder", **folder.fingerprint(listing)}
