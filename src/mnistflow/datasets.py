"""What we know about each dataset of the MNIST family: files, checksums, class names."""
from __future__ import annotations

from dataclasses import dataclass

# The four IDX files every dataset of the family ships, by split and kind.
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str  # the torchvision.datasets class that reads it
    classes: tuple[str, ...]
    sha256: dict[str, str] | None = None  # of the decompressed files; None: torchvision's md5 check stands
    system_dir: str | None = None  # an OS package's copy, used before any download
    shape: tuple[int, int, int] = (1, 28, 28)  # of an image: channels, height, width


DATASETS = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_class="FashionMNIST",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dir="/usr/share/datasets/fashion-mnist",  # Debian: dataset-fashion-mnist
    ),
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_class="MNIST",
        classes=tuple(str(d) for d in range(10)),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        torchvision_class="KMNIST",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}
