import dataclasses
import gzip
import hashlib
import pickle

import json

import numpy as np
import pytest
import torch

from mnistflow.data.synthetic import write_cifar, write_idx
from mnistflow.core.config import DataConfig, VariantConfig
from mnistflow.data.datasets import CIFAR_FILES, DATASETS, IDX_FILES
from mnistflow.data.download import fetch, raw_folder
from mnistflow.core.errors import ConfigError, DataError
from mnistflow.data.preprocess import preprocess, read_raw, split_train_val
from mnistflow.data.splits import Split, load_split, pixel_stats, save_split
from mnistflow.data.transforms import crop_windows, make_variant, random_shift

MNIST = DATASETS["mnist"]
CIFAR = DATASETS["cifar10"]


def data_config(dataset: str, val_size: int, **folder) -> DataConfig:
    return DataConfig(dataset=dataset, mirror=None, verify=False, val_size=val_size, **folder)


@pytest.mark.parametrize("gz", [True, False])
def test_fetch_from_a_mirror_gzipped_or_not(tmp_path, gz):
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20, gz=gz)
    source = fetch(MNIST, str(mirror), tmp_path / "raw")
    assert source == f"data.mirror {mirror}"
    assert sorted(p.name for p in raw_folder(tmp_path / "raw", MNIST).iterdir()) == sorted(IDX_FILES.values())
    train, test = read_raw(tmp_path / "raw", MNIST)
    assert train.images.shape == (50, 1, 28, 28) and len(test) == 20


def test_pinned_checksum_mismatch_names_the_file_and_leaves_nothing(tmp_path):
    spec = dataclasses.replace(MNIST, checksums={name: "0" * 64 for name in IDX_FILES.values()})
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: SHA-256 of the decompressed file is"):
        fetch(spec, str(mirror), tmp_path / "raw")
    assert list(tmp_path.iterdir()) == [tmp_path / "mirror"]  # no partial output, no temp folder


def test_checksums_are_of_the_decompressed_bytes(tmp_path):
    mirror = write_idx(tmp_path / "mirror", n_train=50, n_test=20, gz=True)
    sums = {name: hashlib.sha256(gzip.decompress((mirror / f"{name}.gz").read_bytes())).hexdigest()
            for name in IDX_FILES.values()}
    fetch(dataclasses.replace(MNIST, checksums=sums), str(mirror), tmp_path / "raw")


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


@pytest.mark.parametrize("val_size, n_train, held_out", [(5000, 60000, 5000), (0.08333, 60000, 5000), (0.2, 121, 24),
                                                         (0.5, 3, 2), (1, 2, 1)])
def test_val_size_is_a_count_or_a_share_of_the_training_images(val_size, n_train, held_out):
    assert data_config("mnist", val_size).val_count(n_train) == held_out


@pytest.mark.parametrize("val_size, n_train, message", [
    (100, 100, "data.val_size: 100 must be smaller than the 100 training images"),
    (0.01, 40, "data.val_size: 0.01 of the 40 training images is 0: it must hold out at least 1"),
    (0.99, 40, "data.val_size: 0.99 of the 40 training images is 40: .* leave at least 1 to train on"),
])
def test_a_val_size_that_leaves_nothing_is_refused_naming_it(val_size, n_train, message):
    with pytest.raises(ConfigError, match=message):
        data_config("mnist", val_size).val_count(n_train)


def test_crop_variant_is_a_resized_window_and_deterministic():
    test = Split(torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8), torch.zeros(50, dtype=torch.int64))
    a = make_variant(test, "crop22", VariantConfig(crop=22), seed=0)
    assert a.images.shape == (50, 1, 28, 28) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, make_variant(test, "crop22", VariantConfig(crop=22), seed=0).images)
    assert not torch.equal(a.images, make_variant(test, "other", VariantConfig(crop=22), seed=0).images)
    assert torch.equal(make_variant(test, "full", VariantConfig(crop=28), seed=0).images, test.images)


def test_each_window_is_the_slice_cut_by_hand():
    images = torch.arange(3 * 2 * 6 * 7, dtype=torch.int64).reshape(3, 2, 6, 7)  # every pixel told apart
    tops, lefts = torch.tensor([0, 2, 1]), torch.tensor([3, 0, 1])
    windows = crop_windows(images, tops, lefts, (4, 3)).numpy()
    by_hand = np.stack([images.numpy()[i, :, t:t + 4, l:l + 3] for i, (t, l) in enumerate([(0, 3), (2, 0), (1, 1)])])
    np.testing.assert_array_equal(windows, by_hand)


def test_pixel_stats_are_each_channels_mean_and_sample_std_of_the_0_to_1_pixels():
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 5, 4), dtype=np.uint8)
    stats = pixel_stats(Split(torch.from_numpy(images), torch.zeros(40, dtype=torch.int64)))
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(stats["std"], x.std(axis=(0, 2, 3), ddof=1), atol=1e-6)
    assert stats["mean"][0] != stats["mean"][1]  # the channels are not mixed


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
    ({"images": torch.zeros(3, 1, 28, 28, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)},
     "images are torch.uint8 \\(3, 1, 28, 28\\), expected uint8 \\(N,3,32,32\\)"),
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
        load_split(path, (3, 32, 32) if "32" in message else (1, 28, 28))


def test_preprocess_writes_splits_stats_and_variants(tmp_path):
    mirror = write_idx(tmp_path / "mirror", n_train=60, n_test=30)
    fetch(MNIST, str(mirror), tmp_path / "raw")
    preprocess(tmp_path / "raw", data_config("mnist", 10), 0, {"crop20": VariantConfig(crop=20)}, tmp_path / "out")
    assert len(load_split(tmp_path / "out/train.pt")) == 50
    assert len(load_split(tmp_path / "out/variants/crop20.pt")) == 30
    first = (tmp_path / "out/train.pt").read_bytes()
    save_split(tmp_path / "out/train.pt", load_split(tmp_path / "out/train.pt"))
    assert (tmp_path / "out/train.pt").read_bytes() == first  # torch.save is byte-stable: DVC caching holds


@pytest.mark.parametrize("archive", [True, False])
def test_cifar_from_a_mirror_archive_or_folder_through_preprocess(tmp_path, archive):
    mirror = write_cifar(tmp_path / "mirror", n_train=100, n_test=40, archive=archive)
    assert fetch(CIFAR, str(mirror), tmp_path / "raw", checksums=False) == f"data.mirror {mirror}"
    assert sorted(p.name for p in raw_folder(tmp_path / "raw", CIFAR).iterdir()) == sorted(CIFAR_FILES)
    preprocess(tmp_path / "raw", data_config("cifar10", 20), 0, {"crop24": VariantConfig(crop=24)}, tmp_path / "out")
    train = load_split(tmp_path / "out/train.pt", (3, 32, 32))
    assert train.images.shape == (80, 3, 32, 32) and len(load_split(tmp_path / "out/test.pt", (3, 32, 32))) == 40
    assert load_split(tmp_path / "out/variants/crop24.pt", (3, 32, 32)).images.shape == (40, 3, 32, 32)
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 3
    # each channel's mean, as the pixels say (the generator lights class k's square in channel k % 3)
    expect = (train.images.double() / 255).mean((0, 2, 3))
    assert stats["mean"] == pytest.approx(expect.tolist(), abs=1e-6)


@pytest.mark.parametrize("archive, named", [(True, "cifar-10-python.tar.gz"), (False, "data_batch_1")])
def test_cifar_checksums_pin_the_real_dataset(tmp_path, archive, named):
    mirror = write_cifar(tmp_path / "mirror", n_train=50, n_test=10, archive=archive)
    with pytest.raises(DataError, match=f"{named}: MD5 of the file is .* not the real dataset .*data.verify: false"):
        fetch(CIFAR, str(mirror), tmp_path / "raw")
    assert list(tmp_path.iterdir()) == [tmp_path / "mirror"]


class _Runs:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


@pytest.mark.parametrize("batch, message", [
    (_Runs(), "test_batch: not a CIFAR-10 python batch \\(it refers to __builtin__.print"),
    ({"data": [1, 2], "labels": [0, 1]}, "test_batch: 'data' is list, expected uint8 \\(N, 3072\\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "test_batch: expected 2 labels in 0..9"),
    (b"not a pickle", "test_batch: not a CIFAR-10 python batch"),
])
def test_a_cifar_batch_that_is_not_one_is_refused_naming_it(tmp_path, capsys, batch, message):
    mirror = write_cifar(tmp_path / "mirror", n_train=50, n_test=10, archive=False)
    path = mirror / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=message):
        fetch(CIFAR, str(mirror), tmp_path / "raw", checksums=False)
    assert "ran code" not in capsys.readouterr().out
    assert not (tmp_path / "raw").exists()


def test_a_broken_cifar_archive_is_named(tmp_path):
    mirror = write_cifar(tmp_path / "mirror", n_train=50, n_test=10)
    archive = mirror / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: cannot be read as a tar.gz archive"):
        fetch(CIFAR, str(mirror), tmp_path / "raw", checksums=False)


def test_no_cifar_source_says_how_to_supply_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        fetch(CIFAR, str(tmp_path / "empty"), tmp_path / "raw")
    assert "missing data_batch_1" in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)


def test_colour_crops_and_shifts_move_every_channel_together():
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    shifted = random_shift(images, 3, torch.Generator().manual_seed(0))
    # one shift per image: channel c of the result is channel c of the single-channel result
    for c in range(3):
        alone = random_shift(images[:, c:c + 1].contiguous(), 3, torch.Generator().manual_seed(0))
        assert torch.equal(shifted[:, c:c + 1], alone)
    test = Split(images, torch.zeros(20, dtype=torch.int64))
    variant = make_variant(test, "crop24", VariantConfig(crop=24), seed=0)
    assert variant.images.shape == (20, 3, 32, 32)
    with pytest.raises(ConfigError, match="crop40.crop: 40 is larger than the 32x32 images"):
        make_variant(test, "crop40", VariantConfig(crop=40), seed=0)
