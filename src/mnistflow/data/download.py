"""The download stage: raw files from a mirror, the OS copy or torchvision, verified."""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import shutil
import tarfile
import tempfile
from pathlib import Path

from mnistflow.data import cifar
from mnistflow.data.datasets import CIFAR_TRAIN, IDX_FILES, DatasetSpec
from mnistflow.core.errors import DataError

log = logging.getLogger(__name__)

_MAGIC = {"images": 2051, "labels": 2049}  # IDX magic numbers: uint8 data, 3 or 1 dims


def raw_folder(root: Path, spec: DatasetSpec) -> Path:
    """Where the raw files sit under `root`: torchvision's layout for the dataset."""
    return Path(root) / spec.raw_subdir


def fetch(spec: DatasetSpec, mirror: str | None, out: Path, checksums: bool = True) -> str:
    """Fill `out` with the verified raw files; return a description of the source used.
    `checksums`: check the real dataset's pinned checksums (data.verify).

    The files are assembled in a temporary folder beside `out` and moved into place
    only when all are verified, so a failure leaves no partial `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = raw_folder(Path(tmp) / "root", spec)
        staging.mkdir(parents=True)
        for label, folder in (("data.mirror", mirror), ("system copy", spec.system_dir)):
            if folder is None:
                continue
            found = _gather(Path(folder), spec, Path(tmp) / "archive", checksums)
            if isinstance(found, str):
                tried.append(f"{label} {folder}: {found}")
                continue
            for name, path in found.items():
                _copy_decompressed(path, staging / name)
            source = f"{label} {folder}"
            break
        else:
            source = _torchvision_download(spec, Path(tmp) / "dl", staging, tried)
        verify(staging, spec, checksums)
        if out.exists():
            shutil.rmtree(out)
        (Path(tmp) / "root").rename(out)
    log.info("%s: raw files from %s", spec.name, source)
    return source


def _gather(folder: Path, spec: DatasetSpec, scratch: Path, checksums: bool) -> dict[str, Path] | str:
    """Each of the dataset's files in `folder` (from its archive, where it holds one), or
    why not."""
    if spec.archive and (archive := folder / spec.archive[0]).is_file():
        if checksums:
            _check_digest(archive, "md5", spec.archive[1], spec)
        folder = _extract(archive, spec, scratch)
    found = {name: _find(folder, name, spec) for name in spec.files}
    missing = [name for name, path in found.items() if path is None]
    return f"missing {', '.join(missing)}" if missing else found


def _find(folder: Path, name: str, spec: DatasetSpec) -> Path | None:
    for base in (folder, folder / spec.raw_subdir):  # loose, or as torchvision lays them out
        for candidate in (base / name, base / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _extract(archive: Path, spec: DatasetSpec, scratch: Path) -> Path:
    """The dataset's files out of a tar.gz, by name alone: no path in the archive is followed."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in spec.files:
                    with tar.extractfile(member) as fin, open(scratch / name, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot be read as a tar.gz archive ({exc})") from None
    return scratch


def _torchvision_download(spec: DatasetSpec, root: Path, staging: Path, tried: list[str]) -> str:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        cls(root=str(root), train=True, download=True)  # fetches every file, md5-checked
    except Exception as exc:  # network errors come in many types; all mean "not from here"
        tried.append(f"torchvision download: {type(exc).__name__}: {exc}")
        if spec.format == "idx":
            hint = "set data.mirror in params.yaml to a folder holding the four IDX files (gzipped or not)"
        else:
            hint = (f"set data.mirror in params.yaml to a folder holding {spec.archive[0]} "
                    f"or the {spec.raw_subdir} folder it extracts to")
        if spec.system_dir:
            hint += f", or install the OS copy (Debian: apt-get install dataset-fashion-mnist -> {spec.system_dir})"
        raise DataError(f"no source could supply {spec.name}. Tried:\n  - " + "\n  - ".join(tried)
                        + f"\nTo supply the data: {hint}.") from None
    for name in spec.files:
        shutil.copyfile(raw_folder(root, spec) / name, staging / name)
    return "torchvision download"


def _copy_decompressed(src: Path, dst: Path) -> None:
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip
        raise DataError(f"{src}: cannot be read ({exc})") from None


def _check_digest(path: Path, kind: str, expected: str, spec: DatasetSpec) -> None:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, kind).hexdigest()
    if digest != expected:
        what = "the decompressed file" if spec.format == "idx" else "the file"
        raise DataError(f"{path.name}: {kind.upper().replace('SHA', 'SHA-')} of {what} is {digest}, expected "
                        f"{expected} for {spec.name}; the file is altered, truncated or not the real dataset "
                        f"(data.verify: false takes other data in this format)")


def verify(folder: Path, spec: DatasetSpec, checksums: bool = True) -> None:
    """Check every file's structure and that counts agree; also its checksum, when pinned and asked."""
    folder = Path(folder)
    if checksums and spec.checksums:
        for name in spec.files:
            _check_digest(folder / name, spec.hash, spec.checksums[name], spec)
    if spec.format == "cifar":
        for name in (*CIFAR_TRAIN, "test_batch"):
            cifar.read_batch(folder / name, spec.shape, len(spec.classes))
        cifar.check_meta(folder / "batches.meta", len(spec.classes))
        return
    counts = {key: _check_idx(folder / name, key[1], spec.shape) for key, name in IDX_FILES.items()}
    for split in ("train", "test"):
        if counts[split, "images"] != counts[split, "labels"]:
            raise DataError(f"{split}: {counts[split, 'images']} images but {counts[split, 'labels']} labels")


def _check_idx(path: Path, kind: str, shape: tuple[int, int, int]) -> int:
    data = path.read_bytes()
    if len(data) < 8 or int.from_bytes(data[:4], "big") != _MAGIC[kind]:
        raise DataError(f"{path.name}: not an IDX {kind} file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(data) != expected:
        raise DataError(f"{path.name}: {len(data)} bytes, but its header {dims} says {expected}; "
                        f"the file is truncated or altered")
    if kind == "images" and dims[1:] != list(shape[1:]):
        raise DataError(f"{path.name}: images are {dims[1:]}, expected {shape[1]}x{shape[2]}")
    return dims[0]
