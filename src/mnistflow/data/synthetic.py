"""Tiny learnable datasets in the real formats (MNIST IDX, CIFAR-10 batches), for tests and the
reproducibility check."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def band_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n learnable 28x28 uint8 images and their labels: class k lights up a band at row 2k, over noise."""
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 6 + 2 * k, 4:24] = 255
    return images, labels


def write_idx(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, gz: bool = True) -> Path:
    """Write the four IDX files of `band_images` into `folder`."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = band_images(n, rng)
        files = {
            f"{prefix}-images-idx3-ubyte": _idx_bytes(2051, images),
            f"{prefix}-labels-idx1-ubyte": _idx_bytes(2049, labels),
        }
        for name, data in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_cifar(folder: Path, n_train: int = 500, n_test: int = 100, seed: int = 0, archive: bool = True) -> Path:
    """CIFAR-10's python version in miniature, in the real format: five training batches, a test
    batch and batches.meta, pickled as the real ones load (protocol 2, latin-1 strings), in
    `cifar-10-python.tar.gz` (archive) or a `cifar-10-batches-py` folder. Class k is a bright
    square at its own place and in its own colour, over noise."""
    import pickle
    import tarfile

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(np.arange(n_train), 5))}
    batches["test_batch"] = np.arange(n_test)
    files = {"batches.meta": {"label_names": [f"class{k}" for k in range(10)], "num_cases_per_batch": n_train // 5}}
    for name, index in batches.items():
        labels = (index % 10).astype(np.int64)
        rng.shuffle(labels)
        images = rng.integers(0, 80, size=(len(labels), 3, 32, 32)).astype(np.uint8)
        for i, k in enumerate(labels):
            top, left = 4 + 6 * (k // 4), 4 + 6 * (k % 4)
            images[i, k % 3, top:top + 8, left:left + 8] = 255
        files[name] = {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(len(labels), -1),
                       "filenames": [f"{name}_{i}.png" for i in range(len(labels))]}
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (out / name).write_bytes(pickle.dumps(obj, protocol=2))
    if archive:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(out, arcname="cifar-10-batches-py")
        for path in out.iterdir():
            path.unlink()
        out.rmdir()
    return folder


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 40, seed: int = 0,
                       split: bool = False, sizes=((40, 40), (36, 52), (64, 48)), gray_every: int = 0,
                       jpeg_only: bool = False) -> Path:
    """A folder of class subfolders, in `train/` and `test/` (a quarter) when `split`: PNG and
    JPEG files in turn (JPEG only if `jpeg_only`), RGB (grayscale each `gray_every`-th), of the `sizes` in turn. Class k is
    a bright horizontal band at its own height, over noise, which survives resize and crop."""
    import torch
    from torchvision.io import write_jpeg, write_png

    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, name in enumerate(classes):
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            image = rng.integers(0, 70, size=(3, h, w)).astype(np.uint8)
            top = int(h * (0.15 + 0.7 * k / max(1, len(classes) - 1)))
            image[:, max(0, top - h // 12): top + h // 12 + 1, w // 8: w - w // 8] = 255
            tensor = torch.from_numpy(image)
            if gray_every and i % gray_every == 0:
                tensor = tensor[:1]
            sub = ("test" if i % 4 == 0 else "train") if split else ""
            folder = root / sub / name
            folder.mkdir(parents=True, exist_ok=True)
            if i % 2 or jpeg_only:
                write_jpeg(tensor, str(folder / f"{i:05d}.jpg"), quality=95)
            else:
                write_png(tensor, str(folder / f"{i:05d}.png"))
    return root
