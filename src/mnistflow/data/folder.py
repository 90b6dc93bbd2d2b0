"""Your own images as a dataset: a folder of class subfolders, the layout torchvision's
`ImageFolder` reads, with `train/` and `test/` inside it or not.

The rules (docs/your-images.md):
- classes are the subfolders' names, sorted; with both `train/` and `test/` present they are
  the splits, and every class in test must be in train; else a seeded, stratified test split;
- an image is a .png, .jpg, .jpeg or .webp file anywhere under its class folder; any other
  file there is refused, as is one that does not decode;
- names starting with "." (.DS_Store, .ipynb_checkpoints, editors' swap files) are skipped;
  symlinks are followed, as ImageFolder does; a broken one or a loop is refused;
- each image is decoded by torchvision.io, brought to data.shape's channels (gray <-> RGB,
  alpha dropped; conversions are counted and said), its shorter side resized to the target's
  (antialiased, aspect kept), then centre-cropped: torchvision's usual eval transform.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistflow.core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SPLIT_DIRS = ("train", "test")
_SHOWN = 5  # bad files named in one message
_CHUNK = 256  # images per task of a decoding process


@dataclass(frozen=True)
class Listing:
    """What a folder holds: its classes and, per split ("train", "test"; "all" without
    train/ and test/), each image's path relative to the folder and its class index."""
    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]

    def __len__(self) -> int:
        return sum(map(len, self.files.values()))

    @property
    def presplit(self) -> bool:
        return "all" not in self.files


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _subdirs(path: Path) -> list[Path]:
    return [p for p in _visible(path) if p.is_dir()]


def _images(class_dir: Path, root: Path) -> list[str]:
    """The images under one class folder, recursively, as paths relative to `root`."""
    found, bad, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise DataError(f"{Path(dirpath).relative_to(root)}: a symlink loop (this folder is reached twice)")
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if not path.exists():
                raise DataError(f"{rel}: a broken symlink (it points to {os.readlink(path)!r}, which does not exist)")
            (found if name.lower().endswith(IMAGE_SUFFIXES) else bad).append(rel)
    if bad:
        raise DataError(f"not an image ({', '.join(IMAGE_SUFFIXES)}): {', '.join(bad[:_SHOWN])}"
                        + (f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
                        + "; move such files out of the class folders (names starting with '.' are skipped)")
    return found


def scan(root: str | Path) -> Listing:
    """List the folder's classes and images, refusing a layout the pipeline cannot take."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    names = {p.name for p in _subdirs(root)}
    if names & set(SPLIT_DIRS) and not set(SPLIT_DIRS) <= names:
        have, lack = sorted(names & set(SPLIT_DIRS))[0], sorted(set(SPLIT_DIRS) - names)[0]
        raise DataError(f"{root}: has {have}/ but no {lack}/; give both (their subfolders are the classes) "
                        f"or neither (the subfolders of {root} are the classes)")
    splits = {s: root / s for s in SPLIT_DIRS} if set(SPLIT_DIRS) <= names else {"all": root}
    classes_of = {s: [p.name for p in _subdirs(d)] for s, d in splits.items()}
    classes = tuple(classes_of.get("train", classes_of.get("all")))
    if len(classes) < 2:
        where = splits.get("train", root)
        raise DataError(f"{where}: {len(classes)} class folder{'s' * (len(classes) != 1)}"
                        f"{' (' + classes[0] + ')' if classes else ''}; a classifier needs at least 2")
    if extra := sorted(set(classes_of.get("test", ())) - set(classes)):
        raise DataError(f"{root}: class{'es' * (len(extra) > 1)} {', '.join(extra)} in test/ but not in train/; "
                        f"a model cannot learn a class it never sees")
    files = {}
    for split, folder in splits.items():
        files[split] = []
        for label, name in enumerate(classes):
            if not (folder / name).is_dir():
                continue  # a class missing from test/: nothing of it to test
            images = _images(folder / name, root)
            if not images:
                raise DataError(f"{(folder / name).relative_to(root.parent)}: an empty class folder (no image in it)")
            files[split] += [(rel, label) for rel in images]
    return Listing(root, classes, files)


def fingerprint(listing: Listing) -> dict:
    """The folder by content: each image's SHA-256, so adding, removing or editing one changes it."""
    def digest(rel: str) -> str:
        with open(listing.root / rel, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    with ThreadPoolExecutor(2) as pool:
        rels = [rel for files in listing.files.values() for rel, _ in files]
        return {"classes": list(listing.classes), "files": dict(zip(rels, pool.map(digest, rels)))}


def copy(listing: Listing, out: Path) -> None:
    """The listed images (symlinks resolved) into `out`, assembled beside it and moved into place
    whole."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "images"
        for files in listing.files.values():
            for rel, _ in files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(listing.root / rel, staging / rel)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    log.info("%s: %d images in %d classes copied to %s", listing.root, len(listing), len(listing.classes), out)


def _decode(path: Path, shape: tuple[int, int, int]):
    """One image as uint8 (C,H,W) at `shape`, and whether its channels were converted. The same
    bytes as torchvision's `Resize(antialias=True)` and `CenterCrop`, without their per-call
    overhead, which costs as much as the decoding of a small image."""
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    try:
        image = decode_image(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8),
                             mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: cannot be decoded, truncated or not an image "
                        f"({str(exc).splitlines()[0] or type(exc).__name__})") from None
    channels, height, width = shape
    if image.shape[0] in (2, 4):  # gray or RGB with alpha: the alpha dropped
        image = image[:-1]
    converted = image.shape[0] != channels
    if converted:
        image = rgb_to_grayscale(image) if channels == 1 else image.expand(3, -1, -1)
    h, w = image.shape[1:]
    scale = max(height / h, width / w)  # the shorter side (relative to the target) to the target's
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
    top, left = int(round((size[0] - height) / 2)), int(round((size[1] - width) / 2))  # as CenterCrop
    return image[:, top:top + height, left:left + width].contiguous(), converted


def _decode_chunk(paths: list[Path], shape: tuple[int, int, int]):
    """Decode in a worker process: one torch thread each (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)
    decoded = [_decode(path, shape) for path in paths]
    return torch.stack([image for image, _ in decoded]).numpy(), sum(c for _, c in decoded)


def decode(listing: Listing, split: str, shape: tuple[int, int, int], workers: int):
    """A split's images and labels as uint8 (N,C,H,W) and int64 (N,) tensors, and how many
    images had their channels converted; decoded by `workers` processes (forked: the stage
    has loaded torch already), in chunks, in order."""
    import multiprocessing

    import torch

    files = listing.files[split]
    paths = [listing.root / rel for rel, _ in files]
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
            results = list(pool.map(_decode_chunk, chunks, [shape] * len(chunks)))
    else:
        results = [_decode_chunk(chunk, shape) for chunk in chunks]
    converted = sum(c for _, c in results)
    if converted:
        kind = "grayscale to RGB" if shape[0] == 3 else "colour to grayscale"
        where = "the folder's" if split == "all" else f"the {split}"
        log.warning("%s: %d of %s %d images converted %s (data.shape has %d channel%s)", listing.root, converted,
                    where, len(files), kind, shape[0], "s" * (shape[0] > 1))
    images = torch.from_numpy(np.concatenate([a for a, _ in results])) if results else \
        torch.empty((0, *shape), dtype=torch.uint8)
    return images, torch.tensor([label for _, label in files], dtype=torch.int64), converted


def stratified_split(labels, test_size: int, seed: int):
    """Seeded indices (train, test) with `test_size` test images, each class in proportion
    (largest remainders), every class keeping at least one training image."""
    import torch

    n = len(labels)
    if not 1 <= test_size < n:
        raise DataError(f"data.test_size: {test_size} must be at least 1 and below the folder's {n} images")
    counts = torch.bincount(labels)
    quota = counts.double() * test_size / n
    take = quota.floor().long()
    for k in torch.argsort(quota - take, descending=True, stable=True)[: test_size - int(take.sum())]:
        take[k] += 1
    take = torch.minimum(take, counts - 1)
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for k in range(len(counts)):
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test.append(idx[: take[k]])
        train.append(idx[take[k]:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values
