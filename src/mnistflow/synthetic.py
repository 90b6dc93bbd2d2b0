"""A tiny learnable dataset in the MNIST IDX format, for tests and the reproducibility check."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, gz: bool = True) -> Path:
    """Write the four IDX files into `folder`: class k lights up a band at row 2k, over noise."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 + 2 * k: 6 + 2 * k, 4:24] = 255
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
