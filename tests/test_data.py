import dataclasses
import gzip
import hashlib

import pytest
import torch

from mnistflow.synthetic import write_idx
from mnistflow.config import VariantConfig
from mnistflow.datasets import DATASETS, FILES
from mnistflow.download import fetch, raw_folder
from mnistflow.errors import ConfigError, DataError
from mnistflow.splits import (Split, load_split, make_variant, preprocess, random_shift, read_raw,
                              save_split, split_train_val)

MNIST = DATASETS["mnist"]


@pytest.mark.parametrize("gz", [True, False])
def test_fetch_from_a_mirror_gzipped_or_not(tmp_path, gz):
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20, gz=gz)
    source = fetch(MNIST, str(mirror), tmp_path / "raw")
    assert source == f"data.mirror {mirror}"
    assert sorted(p.name for p in raw_folder(tmp_path / "raw", MNIST).iterdir()) == sorted(FILES.values())
    train, test = read_raw(tmp_path / "raw", MNIST)
    assert train.images.shape == (50, 1, 28, 28) and len(test) == 20


def test_pinned_checksum_mismatch_names_the_file_and_leaves_nothing(tmp_path):
    spec = dataclasses.replace(MNIST, sha256={name: "0" * 64 for name in FILES.values()})
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: SHA-256 of the decompressed file is"):
        fetch(spec, str(mirror), tmp_path / "raw")
    assert list(tmp_path.iterdir()) == [tmp_path / "mirror"]  # no partial output, no temp folder


def test_checksums_are_of_the_decompressed_bytes(tmp_path):
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20, gz=True)
    sums = {name: hashlib.sha256(gzip.decompress((mirror / f"{name}.gz").read_bytes())).hexdigest()
            for name in FILES.values()}
    fetch(dataclasses.replace(MNIST, sha256=sums), str(mirror), tmp_path / "raw")


def test_truncated_file_is_named(tmp_path):
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20, gz=False)
    path = mirror / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: .* the file is truncated or altered"):
        fetch(MNIST, str(mirror), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_no_source_says_what_was_tried_and_how_to_supply_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        fetch(MNIST, str(empty), tmp_path / "raw")
    message = str(err.value)
    assert f"data.mirror {empty}: missing train-images-idx3-ubyte" in message
    assert "torchvision download:" in message
    assert "set data.mirror in params.yaml" in message
    assert not (tmp_path / "raw").exists()


def test_splits_are_seeded_disjoint_and_complete():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 28, 28).contiguous()
    full = Split(images, torch.arange(100) % 10)
    train, val = split_train_val(full, 20, seed=1)
    again, _ = split_train_val(full, 20, seed=1)
    other, _ = split_train_val(full, 20, seed=2)
    ids = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(train) == 80 and len(val) == 20 and not ids(train) & ids(val)
    assert ids(train) | ids(val) == set(range(100))
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    with pytest.raises(ConfigError, match="data.val_size: 100 must be smaller than the 100 training images"):
        split_train_val(full, 100, seed=1)


def test_crop_variant_is_a_resized_window_and_deterministic():
    test = Split(torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8), torch.zeros(50, dtype=torch.int64))
    a = make_variant(test, "crop22", VariantConfig(crop=22), seed=0)
    assert a.images.shape == (50, 1, 28, 28) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, make_variant(test, "crop22", VariantConfig(crop=22), seed=0).images)
    assert not torch.equal(a.images, make_variant(test, "other", VariantConfig(crop=22), seed=0).images)
    assert torch.equal(make_variant(test, "full", VariantConfig(crop=28), seed=0).images, test.images)


def test_random_shift_moves_content_without_changing_it():
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[0, 0, 10, 12] = 255
    shifted = random_shift(image.expand(64, 1, 28, 28), 2, torch.Generator().manual_seed(0))
    spots = (shifted[:, 0] == 255).nonzero()[:, 1:]
    assert len(spots) == 64  # one bright pixel per image, moved by at most 2 each way
    assert (spots - torch.tensor([10, 12])).abs().max() <= 2 and len({tuple(s) for s in spots.tolist()}) > 5
    assert random_shift(image, 0, torch.Generator()) is image


@pytest.mark.parametrize("obj, message", [
    ({"images": torch.zeros(3, 28, 28, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)},
     "expected uint8 \\(N,1,28,28\\)"),
    ({"images": torch.zeros(3, 1, 28, 28), "labels": torch.zeros(3, dtype=torch.int64)}, "images are torch.float32"),
    ({"images": torch.zeros(3, 1, 28, 28, dtype=torch.uint8), "labels": torch.tensor([0, 1, 10])},
     "labels outside 0..9"),
    ({"images": torch.zeros(3, 1, 28, 28, dtype=torch.uint8), "labels": torch.zeros(2, dtype=torch.int64)},
     "expected int64 \\(3,\\)"),
])
def test_bad_split_files_are_refused_naming_the_file(tmp_path, obj, message):
    path = tmp_path / "train.pt"
    torch.save(obj, path)
    with pytest.raises(DataError, match=f"{path}: .*{message}"):
        load_split(path)


def test_preprocess_writes_splits_stats_and_variants(tmp_path):
    mirror = write_idx(tmp_path / "mirror", n_train=60, n_test=30)
    fetch(MNIST, str(mirror), tmp_path / "raw")
    preprocess(tmp_path / "raw", MNIST, 10, 0, {"crop20": VariantConfig(crop=20)}, tmp_path / "out")
    assert len(load_split(tmp_path / "out/train.pt")) == 50
    assert len(load_split(tmp_path / "out/variants/crop20.pt")) == 30
    first = (tmp_path / "out/train.pt").read_bytes()
    save_split(tmp_path / "out/train.pt", load_split(tmp_path / "out/train.pt"))
    assert (tmp_path / "out/train.pt").read_bytes() == first  # torch.save is byte-stable: DVC caching holds
