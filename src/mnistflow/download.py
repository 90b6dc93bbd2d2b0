"""The download stage: raw IDX files from a mirror, the OS copy or torchvision, verified."""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import shutil
import tempfile
from pathlib import Path

from mnistflow.datasets import FILES, DatasetSpec
from mnistflow.errors import DataError

log = logging.getLogger(__name__)

_MAGIC = {"images": 2051, "labels": 2049}  # IDX magic numbers: uint8 data, 3 or 1 dims


def raw_folder(root: Path, spec: DatasetSpec) -> Path:
    """Where torchvision's dataset class expects the decompressed files under `root`."""
    return Path(root) / spec.torchvision_class / "raw"


def fetch(spec: DatasetSpec, mirror: str | None, out: Path) -> str:
    """Fill `out` with the verified raw files; return a description of the source used.

    The files are assembled in a temporary folder beside `out` and moved into place
    only when all four are verified, so a failure leaves no partial `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = raw_folder(Path(tmp) / "root", spec)
        staging.mkdir(parents=True)
        folders = [("data.mirror", mirror), ("system copy", spec.system_dir)]
        for label, folder in folders:
            if folder is None:
                continue
            missing = [name for name in FILES.values() if _find(Path(folder), name) is None]
            if missing:
                tried.append(f"{label} {folder}: missing {', '.join(missing)}")
                continue
            for name in FILES.values():
                _copy_decompressed(_find(Path(folder), name), staging / name)
            source = f"{label} {folder}"
            break
        else:
            source = _torchvision_download(spec, Path(tmp) / "dl", staging, tried)
        verify(staging, spec)
        if out.exists():
            shutil.rmtree(out)
        (Path(tmp) / "root").rename(out)
    log.info("%s: raw files from %s", spec.name, source)
    return source


def _torchvision_download(spec: DatasetSpec, root: Path, staging: Path, tried: list[str]) -> str:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        cls(root=str(root), train=True, download=True)  # fetches all four files, md5-checked
    except Exception as exc:  # network errors come in many types; all mean "not from here"
        tried.append(f"torchvision download: {type(exc).__name__}: {exc}")
        hint = "set data.mirror in params.yaml to a folder holding the four IDX files (gzipped or not)"
        if spec.system_dir:
            hint += f", or install the OS copy (Debian: apt-get install dataset-fashion-mnist -> {spec.system_dir})"
        raise DataError(f"no source could supply {spec.name}. Tried:\n  - " + "\n  - ".join(tried)
                        + f"\nTo supply the data: {hint}.") from None
    for name in FILES.values():
        shutil.copyfile(raw_folder(root, spec) / name, staging / name)
    return "torchvision download"


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _copy_decompressed(src: Path, dst: Path) -> None:
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip
        raise DataError(f"{src}: cannot be read ({exc})") from None


def verify(folder: Path, spec: DatasetSpec) -> None:
    """Check each file's IDX header and length, its checksum when pinned, and counts agree."""
    counts = {}
    for (split, kind), name in FILES.items():
        path = Path(folder) / name
        counts[split, kind] = _check_idx(path, kind)
        if spec.sha256:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != spec.sha256[name]:
                raise DataError(f"{name}: SHA-256 of the decompressed file is {digest}, "
                                f"expected {spec.sha256[name]} for {spec.name}; the file is altered or truncated")
    for split in ("train", "test"):
        if counts[split, "images"] != counts[split, "labels"]:
            raise DataError(f"{split}: {counts[split, 'images']} images but {counts[split, 'labels']} labels")


def _check_idx(path: Path, kind: str) -> int:
    data = path.read_bytes()
    if len(data) < 8 or int.from_bytes(data[:4], "big") != _MAGIC[kind]:
        raise DataError(f"{path.name}: not an IDX {kind} file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(data) != expected:
        raise DataError(f"{path.name}: {len(data)} bytes, but its header {dims} says {expected}; "
                        f"the file is truncated or altered")
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{path.name}: images are {dims[1:]}, expected 28x28")
    return dims[0]
