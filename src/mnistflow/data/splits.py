"""The split files every stage after preprocess reads: {"images": uint8 (N,C,H,W), "labels":
int64 (N,)}, in the dataset's shape, small enough to live in memory (and on the GPU) whole
during training; each refused on load when it is not that; and the train mean/std beside them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mnistflow.core.errors import DataError
from mnistflow.core.io import load_torch, save_torch


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N,C,H,W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def pixel_stats(train: Split) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of the training pixels, scaled to 0..1."""
    x = train.images.double().transpose(0, 1).flatten(1) / 255  # (C, N*H*W)
    return {"mean": [round(m, 6) for m in x.mean(1).tolist()], "std": [round(s, 6) for s in x.std(1).tolist()]}


def save_split(path: Path, split: Split) -> None:
    save_torch(path, {"images": split.images, "labels": split.labels})


def load_split(path: Path, shape: tuple[int, int, int] | None = None, num_classes: int = 10) -> Split:
    """Load a split file, refusing one of the wrong dtype, image shape (`shape`, when given) or
    label range (0..num_classes-1)."""
    path = Path(path)
    try:
        obj = load_torch(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the preprocess stage first") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be loaded as a split file ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"images", "labels"}:
        raise DataError(f"{path}: expected a dict with 'images' and 'labels'")
    images, labels = obj["images"], obj["labels"]
    if images.dtype != torch.uint8 or images.dim() != 4 or shape and tuple(images.shape[1:]) != tuple(shape):
        want = ",".join(map(str, shape or "CHW"))
        raise DataError(f"{path}: images are {images.dtype} {tuple(images.shape)}, expected uint8 (N,{want})")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise DataError(f"{path}: labels are {labels.dtype} {tuple(labels.shape)}, "
                        f"expected int64 ({images.shape[0]},)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1} "
                        f"(min {labels.min().item()}, max {labels.max().item()})")
    return Split(images, labels)


def _stats(data_dir: Path, what: str, key):
    path = Path(data_dir) / "stats.json"
    try:
        return key(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc}); run the preprocess stage") from None


def read_stats(data_dir: Path) -> dict[str, tuple[float, ...]]:
    """The train mean/std per channel that normalize every batch."""
    return _stats(data_dir, "the train mean/std", lambda s: {k: tuple(map(float, s[k])) for k in ("mean", "std")})


def read_classes(data_dir: Path) -> list[str]:
    """The class names, in label order: the dataset's, or your folders'."""
    return _stats(data_dir, "the class names", lambda s: [str(c) for c in s["classes"]])
