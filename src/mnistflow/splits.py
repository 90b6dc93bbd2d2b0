"""The preprocess stage's data: uint8 image tensors, seeded splits, crop variants.

A split file holds {"images": uint8 (N,C,H,W), "labels": int64 (N,)}, in the dataset's
shape; it is small enough to live in memory (and on the GPU) whole during training.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistflow import cifar
from mnistflow.config import VariantConfig
from mnistflow.datasets import CIFAR_TRAIN, DatasetSpec
from mnistflow.errors import ConfigError, DataError
from mnistflow.io import load_torch, save_torch, write_json

NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N,C,H,W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def read_raw(raw_root: Path, spec: DatasetSpec) -> tuple[Split, Split]:
    """Read the raw files: IDX through torchvision's own dataset class, CIFAR batches ourselves
    (torchvision's class would refuse any files but the real dataset's)."""
    if spec.format == "cifar":
        folder = Path(raw_root) / spec.raw_subdir
        return tuple(_cat([cifar.read_batch(folder / name, spec.shape, len(spec.classes)) for name in names])
                     for names in (CIFAR_TRAIN, ["test_batch"]))
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    out = []
    for train in (True, False):
        try:
            ds = cls(root=str(raw_root), train=train, download=False)
        except RuntimeError as exc:
            raise DataError(f"{raw_root}: {exc}; run the download stage first") from None
        out.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)))
    return out[0], out[1]


def _cat(batches) -> Split:
    return Split(torch.from_numpy(np.concatenate([images for images, _ in batches])),
                 torch.from_numpy(np.concatenate([labels for _, labels in batches])))


def split_train_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """A seeded hold-out of `val_size` images from train."""
    if val_size >= len(train):
        raise ConfigError(f"data.val_size: {val_size} must be smaller than the {len(train)} training images")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return (Split(train.images[train_idx], train.labels[train_idx]),
            Split(train.images[val_idx], train.labels[val_idx]))


def make_variant(test: Split, name: str, variant: VariantConfig, seed: int) -> Split:
    """RandomCrop(crop) then Resize back to the image's size, as in the MNIST crop tutorial, but
    seeded. The generator's seed mixes in the variant's name, so two variants differ and
    each is the same on every run.
    """
    crop, (height, width) = variant.crop, test.images.shape[-2:]
    if crop > min(height, width):
        raise ConfigError(f"preprocess.variants.{name}.crop: {crop} is larger than the {height}x{width} images")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    tops = torch.randint(0, height - crop + 1, (len(test),), generator=gen)
    lefts = torch.randint(0, width - crop + 1, (len(test),), generator=gen)
    crops = crop_windows(test.images, tops, lefts, crop)
    from torchvision.transforms.v2 import functional as TF  # here: torchvision costs every other stage ~1 s to import
    images = TF.resize(crops, [height, width], antialias=True)
    return Split(images.contiguous(), test.labels.clone())


def crop_windows(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """One size x size window per image of a (N,C,H,W) batch, at its own (top, left); on any device."""
    tops, lefts = tops.to(images.device), lefts.to(images.device)
    span = torch.arange(size, device=images.device)
    rows = (tops[:, None] + span)[:, :, None]    # (N,size,1)
    cols = (lefts[:, None] + span)[:, None, :]   # (N,1,size)
    n = torch.arange(len(images), device=images.device)[:, None, None]
    return torch.stack([images[:, c][n, rows, cols] for c in range(images.shape[1])], 1)


def random_shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels each way, filling with black (augmentation)."""
    if max_shift == 0:
        return images
    n, size = len(images), images.shape[-1]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    tops = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    lefts = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return crop_windows(padded, tops, lefts, size)


def pixel_stats(train: Split) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of the training pixels, scaled to 0..1."""
    x = train.images.double().transpose(0, 1).flatten(1) / 255  # (C, N*H*W)
    return {"mean": [round(m, 6) for m in x.mean(1).tolist()], "std": [round(s, 6) for s in x.std(1).tolist()]}


def save_split(path: Path, split: Split) -> None:
    save_torch(path, {"images": split.images, "labels": split.labels})


def load_split(path: Path, shape: tuple[int, int, int] | None = None) -> Split:
    """Load a split file, refusing one of the wrong dtype, image shape (`shape`, when given) or
    label range."""
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
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1} "
                        f"(min {labels.min().item()}, max {labels.max().item()})")
    return Split(images, labels)


def read_stats(data_dir: Path) -> dict[str, tuple[float, ...]]:
    """The train mean/std per channel that normalize every batch."""
    path = Path(data_dir) / "stats.json"
    try:
        stats = json.loads(path.read_text())
        return {k: tuple(map(float, stats[k])) for k in ("mean", "std")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the train mean/std ({exc}); run the preprocess stage") from None


def preprocess(raw_root: Path, spec: DatasetSpec, val_size: int, seed: int,
               variants: dict[str, VariantConfig], out: Path) -> None:
    """The preprocess stage: train/val/test split files, stats and test variants."""
    out = Path(out)
    train, test = read_raw(raw_root, spec)
    if tuple(train.images.shape[1:]) != spec.shape:
        raise DataError(f"{raw_root}: images are {tuple(train.images.shape[1:])}, expected {spec.shape} for {spec.name}")
    train, val = split_train_val(train, val_size, seed)
    for name, split in (("train", train), ("val", val), ("test", test)):
        save_split(out / f"{name}.pt", split)
    write_json(out / "stats.json", {"dataset": spec.name, **pixel_stats(train),
                                    "sizes": {"train": len(train), "val": len(val), "test": len(test)}})
    for name, variant in variants.items():
        save_split(out / "variants" / f"{name}.pt", make_variant(test, name, variant, seed))
