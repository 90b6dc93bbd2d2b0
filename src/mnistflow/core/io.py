"""Atomic writes: a killed stage leaves the old file or none, never half of one."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import pickle
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mnistflow.core.errors import DataError, OutOfSpace


def repo_root() -> Path:
    """The project's root. Under `dvc exp run --temp/--queue` a stage runs in a copy
    inside .dvc/tmp/exps; DVC then points DVC_ROOT at the real repo, so every run
    lands in the one MLflow store and relative paths mean what the user meant."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    if path.exists() and not path.is_file():  # /dev/null, a folder: never rename over them
        raise DataError(f"{path} is not a regular file; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Mode 0666 less the umask, as for any new file (mkstemp's would be 0600).
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the write names the temporary file, if any
            raise OutOfSpace(f"no space left on device writing {path}: nothing of it was written, and the "
                            "file it would replace is kept; free some space and run again") from None
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
    import torch  # here: the download stage needs no torch (~1 s to import)

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | Path):
    """Load tensors only: `weights_only=True` refuses pickles that would run code."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to load: it holds more than tensors and plain data, "
                        f"which could run code ({str(exc).splitlines()[0]})") from None
