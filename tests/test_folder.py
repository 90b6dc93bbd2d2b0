"""Your own images (dataset folder): the layout read, the split, and every bad input refused with
its name and nothing written; check_params's checks of the data source for every dataset."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from mnistflow.core.config import DataConfig, parse_config
from mnistflow.core.errors import ConfigError, DataError
from mnistflow.data import folder
from mnistflow.data.preprocess import preprocess
from mnistflow.data.splits import load_split, read_classes
from mnistflow.data.synthetic import write_image_folder
from mnistflow.data.transforms import random_shift
from mnistflow.models import model_names


def folder_config(path, shape=(3, 32, 32), val_size=10, test_size=0.25) -> DataConfig:
    return DataConfig(dataset="folder", mirror=None, verify=True, val_size=val_size, path=str(path),
                      shape=shape, test_size=test_size)


def test_classes_are_the_sorted_subfolders_hidden_names_skipped_symlinks_followed(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("owl", "cat"), per_class=4)
    (root / ".thumbs").mkdir()  # a hidden folder is no class
    (root / "cat" / ".DS_Store").write_bytes(b"\0junk")  # a hidden file is no image
    (root / "README.txt").write_text("beside the classes: not looked at")
    elsewhere = write_image_folder(tmp_path / "elsewhere", classes=("bat", "x"), per_class=2)
    (root / "bat").symlink_to(elsewhere / "bat", target_is_directory=True)  # a linked class folder
    (root / "owl" / "linked.png").symlink_to(elsewhere / "x" / "00000.png")  # a linked image
    listing = folder.scan(root)
    assert listing.classes == ("bat", "cat", "owl") and not listing.presplit
    files = dict(listing.files["all"])
    assert files["owl/linked.png"] == 2 and files["bat/00001.jpg"] == 0 and len(files) == 2 + 4 + 5
    assert not any("DS_Store" in f for f in files)


def test_train_and_test_folders_are_the_splits(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=8, split=True)
    listing = folder.scan(root)
    assert listing.presplit and listing.classes == ("cat", "dog", "owl")
    assert len(listing.files["train"]) == 18 and len(listing.files["test"]) == 6
    assert all(rel.startswith("test/") for rel, _ in listing.files["test"])


def test_the_stratified_split_keeps_each_class_in_proportion_and_is_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, test = folder.stratified_split(labels, 20, seed=3)
    assert torch.bincount(labels[test]).tolist() == [10, 6, 4] and len(train) == 80
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.equal(test, folder.stratified_split(labels, 20, seed=3)[1])
    assert not torch.equal(test, folder.stratified_split(labels, 20, seed=4)[1])


def test_images_of_any_size_are_resized_on_the_shorter_side_then_centre_cropped(tmp_path):
    from torchvision.io import write_png

    (tmp_path / "a").mkdir()
    wide = torch.zeros(3, 20, 80, dtype=torch.uint8)
    wide[:, :, 30:50] = 255  # a bright middle: all that is left after the centre crop
    write_png(wide, str(tmp_path / "a" / "wide.png"))
    image, converted = folder._decode(tmp_path / "a" / "wide.png", (3, 10, 10))
    assert image.shape == (3, 10, 10) and not converted
    assert image[:, :, 1:9].min() > 200  # not squashed: the 20 bright columns of 80 fill the crop


def test_preprocess_writes_split_files_with_the_class_names(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=20)
    preprocess(root, folder_config(root), 0, {"crop24": parse_variant(24)}, tmp_path / "out", threads=2)
    classes = read_classes(tmp_path / "out")
    assert classes == ["cat", "dog", "owl"]
    train, val, test = (load_split(tmp_path / f"out/{s}.pt", (3, 32, 32), 3) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (35, 10, 15)
    assert torch.bincount(test.labels).tolist() == [5, 5, 5]
    assert len(set(train.labels[:6].tolist())) > 1  # shuffled: not the first class's files first
    assert load_split(tmp_path / "out/variants/crop24.pt", (3, 32, 32), 3).images.shape == (15, 3, 32, 32)


def parse_variant(crop):
    from mnistflow.core.config import VariantConfig
    return VariantConfig(crop=crop)


@pytest.mark.parametrize("channels, said", [(3, "converted grayscale to RGB"), (1, "converted colour to grayscale")])
def test_mixed_grayscale_and_rgb_are_converted_and_said(tmp_path, caplog, channels, said):
    root = write_image_folder(tmp_path / "imgs", per_class=12, gray_every=3)  # a third grayscale
    with caplog.at_level(logging.WARNING):
        preprocess(root, folder_config(root, shape=(channels, 16, 16), val_size=3), 0, {}, tmp_path / "out")
    assert load_split(tmp_path / "out/train.pt", (channels, 16, 16), 3).images.shape[1] == channels
    expected = 12 if channels == 3 else 24  # of the 36 images, 12 are gray
    assert f"{expected} of the folder's 36 images {said}" in caplog.text


def test_a_non_square_shape_trains_with_shift(tmp_path):
    images = torch.randint(0, 255, (4, 3, 12, 20), dtype=torch.uint8)
    assert random_shift(images, 2, torch.Generator().manual_seed(0)).shape == (4, 3, 12, 20)


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"cat/00001\.jpg: cannot be decoded, truncated or not an image"),
    ("text", r"cat/00000\.png: cannot be decoded, truncated or not an image"),
])
def test_a_truncated_or_false_image_is_refused_at_preprocess_and_nothing_is_written(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    if damage == "truncated":
        path = root / "cat" / "00001.jpg"
        path.write_bytes(path.read_bytes()[:200])
    else:
        (root / "cat" / "00000.png").write_text("not a PNG at all")
    with pytest.raises(DataError, match=message):
        preprocess(root, folder_config(root, val_size=2), 0, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Each bad folder, as the user would make it, and what check_params says about it.
def _empty_class(root):
    for path in (root / "dog").iterdir():
        path.unlink()


def _not_an_image(root):
    (root / "owl" / "notes.txt").write_text("labels for later")


def _class_in_test_only(root):
    (root / "test" / "bat").mkdir()
    (root / "test" / "cat" / "00000.png").rename(root / "test" / "bat" / "00000.png")


def _one_class(root):
    for name in ("dog", "owl"):
        for path in (root / name).iterdir():
            path.unlink()
        (root / name).rmdir()


def _broken_symlink(root):
    (root / "cat" / "gone.png").symlink_to(root / "nowhere.png")


def _symlink_loop(root):
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)


def _test_without_train(root):
    (root / "test").mkdir()


BAD_FOLDERS = {
    "empty class": (_empty_class, "imgs/dog: an empty class folder (no image in it)"),
    "not an image": (_not_an_image, "not an image (.png, .jpg, .jpeg, .webp): owl/notes.txt"),
    "class in test only": (_class_in_test_only, "class bat in test/ but not in train/"),
    "one class": (_one_class, "1 class folder (cat); a classifier needs at least 2"),
    "missing path": (None, "does not exist"),
    "broken symlink": (_broken_symlink, "cat/gone.png: a broken symlink"),
    "symlink loop": (_symlink_loop, "cat/again: a symlink loop"),
    "test without train": (_test_without_train, "has test/ but no train/"),
}


def check_params(tmp_path, data: dict, models=("mlp",), device="auto"):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    params["train"]["models"] = list(models)
    params["device"] = device
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "params.ok", "source.json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    return out


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_check_params_refuses_a_bad_folder_by_name_and_writes_nothing(tmp_path, case):
    damage, message = BAD_FOLDERS[case]
    root = write_image_folder(tmp_path / "imgs", per_class=8, split=case == "class in test only")
    if damage:
        damage(root)
    path = root if damage else tmp_path / "no-such-folder"
    out = check_params(tmp_path, {"dataset": "folder", "path": str(path), "shape": [3, 32, 32], "val_size": 2})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert message in out.stderr, out.stderr
    assert not (tmp_path / "params.ok").exists() and not (tmp_path / "source.json").exists()


def test_a_good_folder_passes_check_params_with_its_content_in_the_manifest(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=4)
    out = check_params(tmp_path, {"dataset": "folder", "path": str(root), "shape": [1, 28, 28], "val_size": 2},
                       models=("mlp", "cnn"))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "source.json").read_text())
    assert manifest["classes"] == ["cat", "dog", "owl"] and len(manifest["files"]) == 12
    before = (tmp_path / "source.json").read_bytes()
    check_params(tmp_path, {"dataset": "folder", "path": str(root), "shape": [1, 28, 28], "val_size": 2},
                 models=("mlp", "cnn"))
    assert (tmp_path / "source.json").read_bytes() == before  # nothing changed: download stays cached
    (root / "cat" / "00000.png").write_bytes((root / "dog" / "00000.png").read_bytes())  # one image edited
    check_params(tmp_path, {"dataset": "folder", "path": str(root), "shape": [1, 28, 28], "val_size": 2},
                 models=("mlp", "cnn"))
    assert (tmp_path / "source.json").read_bytes() != before


@pytest.mark.parametrize("data, models, device, message", [
    ({"dataset": "folder", "shape": [3, 32, 32], "val_size": 2}, ("cnn",), "auto",
     "model 'cnn' takes 1x28x28 images (channels x height x width), but dataset 'folder' has 3x32x32"),
    ({"dataset": "folder", "shape": [1, 28, 28], "val_size": 2}, ("seq_cnn",), "auto",
     "model 'seq_cnn' takes 3x32x32 images"),
    ({"dataset": "folder", "shape": [3, 32, 32], "val_size": 24}, ("mlp",), "auto",
     "data.val_size: 24 must be smaller than the 19 training images"),  # 24 images, 5 held out for test
    ({"dataset": "mnist", "val_size": 60000}, ("mlp",), "auto",
     "data.val_size: 60000 must be smaller than the 60000 training images of mnist"),
    ({"dataset": "fashion_mnist", "mirror": "data/mirrror"}, ("mlp",), "auto",
     "data.mirror: {tmp}/data/mirrror is not a folder"),
    ({"dataset": "fashion_mnist"}, ("mlp",), "cuda", "device: 'cuda' was asked for but CUDA is not available"),
])
def test_check_params_refuses_what_would_fail_later(tmp_path, data, models, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if data["dataset"] == "folder":
        data["path"] = str(write_image_folder(tmp_path / "imgs", per_class=8))
    out = check_params(tmp_path, data, models, device)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert message.format(tmp=tmp_path) in out.stderr, out.stderr
    assert not (tmp_path / "params.ok").exists()


@pytest.mark.parametrize("data, message", [
    ({"dataset": "folder", "path": "imgs"}, "dataset 'folder' needs data.shape"),
    ({"dataset": "folder", "shape": [3, 8, 8]}, "dataset 'folder' needs data.path"),
    ({"dataset": "folder", "path": "imgs", "shape": [2, 8, 8]}, "with 1 (grayscale) or 3 (RGB) channels"),
    ({"dataset": "folder", "path": "imgs", "shape": [3, 8]}, "must be [channels, height, width]"),
    ({"dataset": "mnist", "shape": [1, 28, 28]}, "data.shape is for dataset 'folder'"),
    ({"dataset": "folder", "path": "imgs", "shape": [3, 8, 8], "test_size": 1.5}, "data.test_size"),
])
def test_the_folder_keys_are_checked_with_the_key_named(data, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    params["train"]["models"] = ["mlp"]
    params["preprocess"]["variants"] = {}
    with pytest.raises(ConfigError) as err:
        parse_config(params, model_names())
    assert message in str(err.value)
