"""What is done to images after they are read: the crop variants of the test set (the MNIST crop
tutorial's RandomCrop then Resize, seeded) and the shift augmentation of training batches; one
window per image, on any device."""
from __future__ import annotations

import zlib

import torch

from mnistflow.core.config import VariantConfig
from mnistflow.core.errors import ConfigError
from mnistflow.data.splits import Split


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


def crop_windows(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
                 size: int | tuple[int, int]) -> torch.Tensor:
    """One window of `size` (a side, or height and width) per image of a (N,C,H,W) batch, at its
    own (top, left); on any device."""
    tops, lefts = tops.to(images.device), lefts.to(images.device)
    height, width = (size, size) if isinstance(size, int) else size
    rows = (tops[:, None] + torch.arange(height, device=images.device))[:, :, None]    # (N,height,1)
    cols = (lefts[:, None] + torch.arange(width, device=images.device))[:, None, :]   # (N,1,width)
    n = torch.arange(len(images), device=images.device)[:, None, None]
    return torch.stack([images[:, c][n, rows, cols] for c in range(images.shape[1])], 1)


def random_shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels each way, filling with black (augmentation)."""
    if max_shift == 0:
        return images
    n, size = len(images), tuple(images.shape[-2:])
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    tops = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    lefts = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return crop_windows(padded, tops, lefts, size)
