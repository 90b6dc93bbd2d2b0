"""CIFAR-10's python version: pickled batches, read without letting a pickle run code.

A batch is a dict: "data", uint8 (N, 3072), each row a 32x32 image as its red, green and
blue planes; "labels", N class indices. `batches.meta` names the classes.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from mnistflow.core.errors import DataError

# The only globals a batch's pickle needs: numpy rebuilding its arrays (numpy.core before 2.0),
# and, in a protocol-2 pickle written by Python 3, the codec that turns its text into bytes.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch does")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # where numpy 2 keeps it, without a deprecation warning
        return super().find_class(module, name)


def load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="latin1").load()  # written by Python 2, as the real files are
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage first") from None
    except Exception as exc:  # a pickle fails in many ways; every one means "not a CIFAR batch"
        raise DataError(f"{Path(path).name}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{Path(path).name}: not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict)")
    return obj


def read_batch(path: Path, shape: tuple[int, int, int], classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images, uint8 (N,C,H,W), and labels, int64 (N,), checked."""
    batch = load(path)
    data, labels = batch.get("data"), batch.get("labels")
    size = int(np.prod(shape))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{Path(path).name}: 'data' is {got}, expected uint8 (N, {size})")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < classes):
        raise DataError(f"{Path(path).name}: expected {len(data)} labels in 0..{classes - 1}")
    return data.reshape(-1, *shape), labels


def check_meta(path: Path, classes: int) -> None:
    names = load(path).get("label_names")
    if not isinstance(names, list) or len(names) != classes:
        raise DataError(f"{Path(path).name}: expected 'label_names' with {classes} classes")
