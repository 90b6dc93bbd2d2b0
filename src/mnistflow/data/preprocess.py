"""The preprocess stage: the raw files read (IDX through torchvision's dataset classes, CIFAR
batches ourselves), a seeded validation hold-out, the split files, their stats and the test
set's variants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnistflow.core.config import DataConfig, VariantConfig
from mnistflow.core.errors import DataError
from mnistflow.core.io import write_json
from mnistflow.data import cifar, folder
from mnistflow.data.datasets import CIFAR_TRAIN, DATASETS, DatasetSpec
from mnistflow.data.splits import Split, pixel_stats, save_split
from mnistflow.data.transforms import make_variant


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
    """A seeded hold-out of `val_size` images from train (`DataConfig.val_count` checks it)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return (Split(train.images[train_idx], train.labels[train_idx]),
            Split(train.images[val_idx], train.labels[val_idx]))


def read_folder(raw_root: Path, data: DataConfig, seed: int, threads: int) -> tuple[Split, Split, tuple[str, ...]]:
    """Your images (mnistflow.data.folder), decoded at data.shape: train and test, and the classes."""
    listing = folder.scan(raw_root)
    if listing.presplit:
        train, test = (Split(*folder.decode(listing, s, data.image_shape, threads)[:2]) for s in ("train", "test"))
    else:
        images, labels, _ = folder.decode(listing, "all", data.image_shape, threads)
        train_idx, test_idx = folder.stratified_split(labels, round(data.test_size * len(labels)), seed)
        train, test = Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx])
    # Files come class by class; a seeded shuffle, so the validation hold-out and the report's
    # training samples are not of the first classes alone.
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return Split(train.images[order], train.labels[order]), test, listing.classes


def preprocess(raw_root: Path, data: DataConfig, seed: int, variants: dict[str, VariantConfig], out: Path,
               threads: int = 1) -> None:
    """The preprocess stage: train/val/test split files, stats (with the class names, which every
    later stage reads) and test variants."""
    out = Path(out)
    if data.dataset == "folder":
        train, test, classes = read_folder(raw_root, data, seed, threads)
    else:
        spec = DATASETS[data.dataset]
        (train, test), classes = read_raw(raw_root, spec), spec.classes
        if tuple(train.images.shape[1:]) != spec.shape:
            raise DataError(f"{raw_root}: images are {tuple(train.images.shape[1:])}, expected {spec.shape} "
                            f"for {spec.name}")
    train, val = split_train_val(train, data.val_count(len(train)), seed)
    for name, split in (("train", train), ("val", val), ("test", test)):
        save_split(out / f"{name}.pt", split)
    write_json(out / "stats.json", {"dataset": data.dataset, "classes": list(classes), **pixel_stats(train),
                                    "sizes": {"train": len(train), "val": len(val), "test": len(test)}})
    for name, variant in variants.items():
        save_split(out / "variants" / f"{name}.pt", make_variant(test, name, variant, seed))
