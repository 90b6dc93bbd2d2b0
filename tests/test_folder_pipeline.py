"""End to end on your own images: the real `dvc repro` on a generated folder of PNG and JPEG
files of mixed sizes, with and without train/ and test/, through every stage; the class names
in the metrics, the figures, the report page and the served model's answers; one image added
and `make repro`'s `mnistflow sources` re-run check_params, download, preprocess and what
follows, and nothing else."""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, dvc, make_project, pipeline_env, run, runs_of, set_params, stages_run
from mnistflow.data.synthetic import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CLASSES = ["cat", "dog", "owl"]



def folder_project(tmp_path: Path, template: Path, split: bool) -> Path:
    # The images outside the project, as a user's usually are.
    images = write_image_folder(tmp_path / "my-images", classes=("owl", "dog", "cat"), per_class=60, split=split,
                                gray_every=5)
    project = make_project(tmp_path / "project", template)
    set_params(project, "data", {"dataset": "folder", "mirror": None, "verify": True, "val_size": 20,
                                 "path": str(images), "shape": [3, 24, 24], "test_size": 0.25})
    set_params(project, "train.models", ["mlp"])
    set_params(project, "preprocess.variants", {"crop20": {"crop": 20}})
    set_params(project, "train.mlp.epochs", 3)
    run(["git", "commit", "-qam", "your images"], project, pipeline_env())
    return project


def check_class_names_everywhere(project: Path, tmp_path: Path, test_size: int) -> None:
    stats = json.loads((project / "data/processed/stats.json").read_text())
    assert stats["classes"] == CLASSES and stats["dataset"] == "folder" and stats["sizes"]["test"] == test_size
    assert json.loads((project / "reports/eval/mlp.per_class.json").read_text())["test"].keys() == set(CLASSES)
    assert (project / "reports/eval/mlp.json").exists()
    confusion = (project / "reports/confusion/mlp/confusion_test.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in confusion[1:]} == set(CLASSES)
    page = (project / "reports/index.html").read_text()
    assert all(f">{name}<" in page for name in CLASSES), "the report's per-class table names the classes"
    assert {p.name for p in (project / "reports/figures").iterdir()} >= {"confusion_mlp.png", "samples.png"}
    # The served model: raw uint8 images in, the folder's class names out, and in its metadata.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    uri = "models:/folder-mlp@champion"
    assert mlflow.models.get_model_info(uri).metadata["classes"] == CLASSES
    test = torch.load(project / "data/processed/test.pt", weights_only=True)
    (tmp_path / "served").mkdir(exist_ok=True)
    served = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path / "served")).predict(test["images"].numpy())
    assert set(served["class"]) <= set(CLASSES) and set(served["probabilities"][0]) == set(CLASSES)
    accuracy = np.mean([c == CLASSES[k] for c, k in zip(served["class"], test["labels"].tolist())])
    assert accuracy > 0.6, "the bands are learnable: the served model must name the right class mostly"
    (run_,) = [r for r in runs_of(project, "folder") if r.data.params.get("model") == "mlp"][-1:]
    assert run_.data.metrics["test_acc"] == pytest.approx(accuracy)


def test_a_folder_without_splits_through_every_stage_and_one_image_more(tmp_path, template):
    project = folder_project(tmp_path, template, split=False)
    first = dvc(project, "repro")
    stages = ["download", "preprocess", "train@mlp", "evaluate@mlp", "visualize"]
    assert stages_run(first.stdout) == ["check_params", *stages]
    check_class_names_everywhere(project, tmp_path, test_size=45)
    assert "converted grayscale to RGB" in first.stdout + first.stderr
    sources = [sys.executable, "-m", "mnistflow.cli", "sources"]
    assert run(sources, project, pipeline_env()).stdout == ""  # the images as they were: nothing to do
    assert stages_run(dvc(project, "repro").stdout) == []  # nothing changed: nothing runs
    images = Path(tmp_path / "my-images")
    (images / "dog" / "extra.png").write_bytes((images / "dog" / "00000.png").read_bytes())
    assert "your images changed" in run(sources, project, pipeline_env()).stdout  # as `make repro` does first
    again = dvc(project, "repro")
    assert stages_run(again.stdout) == ["check_params", *stages]
    assert json.loads((project / "data/processed/stats.json").read_text())["sizes"]["train"] == 181 - 45 - 20


def test_a_folder_with_train_and_test_through_every_stage(tmp_path, template):
    project = folder_project(tmp_path, template, split=True)
    dvc(project, "repro")
    check_class_names_everywhere(project, tmp_path, test_size=45)  # a quarter of each class's 60


def test_the_readmes_command_for_your_images_runs_as_written_on_a_small_folder(tmp_path, template):
    """The README's `dvc exp run` for your own images, word for word but the path, on a folder of
    three classes and 150 images (far below Fashion-MNIST's 60,000: data.val_size is a share)."""
    readme = (ROOT / "README.md").read_text()
    (command,) = {m for m in re.findall(r"`(dvc exp run -S data\.dataset=folder [^`]+)`", readme)}
    images = write_image_folder(tmp_path / "my-images", classes=("owl", "dog", "cat"), per_class=50, split=False)
    project = make_project(tmp_path / "project", template)
    # params.yaml's data section as a newcomer has it (the template reads a tiny MNIST mirror)
    default = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    set_params(project, "data.mirror", default["mirror"])
    set_params(project, "data.val_size", default["val_size"])
    run(["git", "commit", "-qam", "params.yaml's data section"], project, pipeline_env())
    args = [f"data.path={images}" if a == "data.path=/abs/path" else a for a in shlex.split(command)[1:]]
    assert str(images) in " ".join(args)  # the README names its placeholder as this test expects
    ran = stages_run(run([sys.executable, "-m", "dvc", *args], project, pipeline_env()).stdout)
    assert ran[:3] == ["check_params", "download", "preprocess"] and "train@mlp" in ran
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project, pipeline_env()).stdout
    assert '"dataset": "folder"' in shown.replace("'", '"')
