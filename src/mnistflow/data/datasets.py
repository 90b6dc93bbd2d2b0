"""What we know about each dataset: its files, image shape, classes and checksums."""
from __future__ import annotations

from dataclasses import dataclass

# The four IDX files every dataset of the MNIST family ships, by split and kind.
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# CIFAR-10's python version: pickled batches of 10,000 images, as its archive extracts them.
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_TRAIN, "test_batch", "batches.meta")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str  # the torchvision.datasets class that downloads it
    classes: tuple[str, ...]
    format: str = "idx"  # idx | cifar (python pickle batches)
    shape: tuple[int, int, int] = (1, 28, 28)  # of an image: channels, height, width
    train_size: int = 60_000  # images in the real dataset's training files
    # Checksums of the real dataset's (decompressed) files, checked when data.verify is on;
    # None: only torchvision's own check of a download stands.
    checksums: dict[str, str] | None = None
    hash: str = "sha256"
    archive: tuple[str, str] | None = None  # (name, md5) of an archive a mirror may hold instead
    system_dir: str | None = None  # an OS package's copy, used before any download

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(IDX_FILES.values()) if self.format == "idx" else CIFAR_FILES

    @property
    def raw_subdir(self) -> str:
        """Where torchvision's download leaves the files under its root (and we keep them)."""
        return f"{self.torchvision_class}/raw" if self.format == "idx" else "cifar-10-batches-py"


DATASETS = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_class="FashionMNIST",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        checksums={
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
    "cifar10": DatasetSpec(
        name="cifar10",
        torchvision_class="CIFAR10",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        format="cifar",
        shape=(3, 32, 32),
        train_size=50_000,
        # The md5s torchvision publishes for the real files (torchvision/datasets/cifar.py).
        checksums={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        hash="md5",
        archive=("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    ),
}
