"""Atomic writes: a killed stage leaves the old file or none, never half of one."""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from mnistflow.errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)


def repo_root() -> Path:
    """The project's root. Under `dvc exp run --temp/--queue` a stage runs in a copy
    inside .dvc/tmp/exps; DVC then points DVC_ROOT at the real repo, so every run
    lands in the one MLflow store and relative paths mean what the user meant."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    # Insertion order, not sorted: it is deterministic, and reads as written (test before crop22).
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_csv(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def write_figure(path: str | Path, fig, dpi: int = 100) -> None:
    """A matplotlib Figure as PNG, without the version stamp, so equal figures are equal files."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    write_bytes(path, buf.getvalue())


def save_torch(path: str | Path, obj) -> None:
    # Through a buffer: torch.save names the archive inside after the file it writes,
    # and a random temporary name would make identical tensors differ byte for byte.
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | Path):
    """Load tensors only: `weights_only=True` refuses pickles that would run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to load: it holds more than tensors and plain data, "
                        f"which could run code ({str(exc).splitlines()[0]})") from None
