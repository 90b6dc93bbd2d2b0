"""CIFAR-10 end to end: the real `dvc repro` on a tiny generated CIFAR-10 in the real format
(pickled batches in cifar-10-python.tar.gz, in a mirror folder), with seq_cnn and mlp. Every
stage follows the dataset's 3x32x32 shape: split files, crop variants, evaluation, colour
figures, the MLflow model's signature."""
from __future__ import annotations

import json

import matplotlib.image
import mlflow
import numpy as np
import pytest
import torch

from conftest import dvc, make_project, runs_of, set_params, stages_run
from mnistflow.data.datasets import DATASETS
from mnistflow.models import create_model
from mnistflow.data.synthetic import write_cifar

pytestmark = pytest.mark.e2e
MODELS = ["seq_cnn", "mlp"]
SHAPE = (3, 32, 32)



@pytest.fixture(scope="module")
def project(tmp_path_factory, template):
    mirror = write_cifar(tmp_path_factory.mktemp("cifar"), n_train=500, n_test=100)
    project = make_project(tmp_path_factory.mktemp("project"), template, seq_cnn={"epochs": 3})
    for key, value in {"data.dataset": "cifar10", "data.mirror": str(mirror), "train.models": MODELS,
                       "data.verify": False}.items():  # generated data: not the real dataset's checksums
        set_params(project, key, value)
    dvc(project, "repro")
    return project


def test_every_stage_follows_the_datasets_shape(project):
    for split in ("train", "val", "test", "variants/crop22", "variants/crop18"):
        images = torch.load(project / f"data/processed/{split}.pt", weights_only=True)["images"]
        assert tuple(images.shape[1:]) == SHAPE and images.dtype == torch.uint8, split
    stats = json.loads((project / "data/processed/stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 3
    for model in MODELS:
        metrics = json.loads((project / f"reports/eval/{model}.json").read_text())
        assert set(metrics) == {"test", "crop22", "crop18"}
        assert metrics["test"] > 0.3, (model, metrics)  # learned something: chance is 0.1
    runs = {r.data.params["model"]: r for r in runs_of(project, "cifar10")}
    assert set(runs) == set(MODELS) and all(r.info.status == "FINISHED" for r in runs.values())
    assert all("test_acc" in r.data.metrics for r in runs.values())


def test_dvc_plots_draw_the_models_of_train_models_and_no_missing_file(project):
    """train.models is seq_cnn and mlp here, not the default three: DVC's plots follow it."""
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots["errors"]
    loss = plots["data"]["Validation loss"][0]["content"]["data"]["values"]
    assert {row["model"] for row in loss} == set(MODELS)
    matrices = {path for path in plots["data"] if path.startswith("reports/confusion/")}
    assert matrices == {f"reports/confusion/{m}/confusion_{s}.csv" for m in MODELS for s in ("test", "crop22", "crop18")}


def colour_fraction(png) -> float:
    """The share of pixels whose channels differ by more than a tint: 0 for a grey figure."""
    rgb = matplotlib.image.imread(png)[..., :3]
    return float(((rgb.max(-1) - rgb.min(-1)) > 0.15).mean())


@pytest.mark.parametrize("figure", ["samples.png", "weights_seq_cnn.png",
                                    "weights_mlp.png", "feature_maps_seq_cnn.png"])
def test_images_and_filters_are_drawn_in_colour(project, figure):
    assert colour_fraction(project / "reports/figures" / figure) > 0.05


def test_the_logged_model_takes_3x32x32_images_and_predicts_like_the_weights(project, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    info = mlflow.models.get_model_info("models:/cifar10-seq_cnn@candidate")
    assert info.signature.inputs.inputs[0].shape == (-1, *SHAPE)
    assert np.array(json.loads(mlflow.artifacts.load_text(
        f"{info.artifact_path}/input_example.json"))).shape == (2, *SHAPE)
    test = torch.load(project / "data/processed/test.pt", weights_only=True)
    stats = json.loads((project / "data/processed/stats.json").read_text())
    net = create_model("seq_cnn", SHAPE)
    net.load_state_dict(torch.load(project / "models/seq_cnn.pt", weights_only=True))
    mean, std = (torch.tensor(stats[k]).view(-1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = net.eval()((test["images"].float() / 255 - mean) / std).argmax(1)
    served = mlflow.pyfunc.load_model("models:/cifar10-seq_cnn@candidate", dst_path=str(tmp_path)).predict(
        test["images"].numpy())
    classes = list(DATASETS["cifar10"].classes)  # the served names: the dataset's, not the files'
    assert [classes.index(c) for c in served["class"]] == expected.tolist()


def test_a_model_that_cannot_take_the_images_is_refused_before_any_output_is_touched(project):
    outputs = [f for d in ("data", "models", "reports") for f in sorted((project / d).rglob("*")) if f.is_file()]
    before = {p: p.read_bytes() for p in [project / "dvc.lock", *outputs]}
    set_params(project, "train.models", ["seq_cnn", "lenet"])
    try:
        refused = dvc(project, "repro", check=False)
    finally:
        set_params(project, "train.models", MODELS)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "model 'lenet' takes 1x28x28 images (channels x height x width), but dataset 'cifar10' has 3x32x32" \
        in refused.stdout + refused.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert stages_run(dvc(project, "repro").stdout) == []
