"""The tutorials' other models through the real pipeline: two_layer (its own autograd ReLU) and
dynamic (a depth drawn per pass) train, evaluate and are logged, and their stages run again give
the same bytes, dynamic's weights included (whole clean runs twice are `make repro-check`'s)."""
import json

import pytest
import yaml

from conftest import add_make, dvc, make_project, pipeline_env, run, runs_of, set_params, stages_run
from mnistflow.tools.reprocheck import output_hashes

pytestmark = pytest.mark.e2e
MODELS = ["two_layer", "dynamic"]


@pytest.mark.slow  # minutes: make test-slow (CI) runs it
def test_two_layer_and_dynamic_train_and_reproduce_byte_for_byte(tmp_path, template):
    project = make_project(tmp_path / "project", template, **{m: {"epochs": 2, "batch_size": 64} for m in MODELS})
    set_params(project, "train.models", MODELS)
    stages = [f"{stage}@{model}" for stage in ("train", "evaluate") for model in MODELS]
    first = dvc(project, "repro").stdout
    assert set(stages) | {"visualize"} <= set(stages_run(first))
    lock = (project / "dvc.lock").read_text()
    forced = dvc(project, "repro", "--force", "--single-item", *stages).stdout
    assert sorted(stages_run(forced)) == sorted(stages)  # run again (--force: not from the run-cache)
    assert output_hashes(yaml.safe_load((project / "dvc.lock").read_text())) == output_hashes(yaml.safe_load(lock))
    for model in MODELS:  # learned something (chance is 0.1)
        assert json.loads((project / f"reports/eval/{model}.json").read_text())["test"] > 0.3
    runs = {r.data.params["model"]: r for r in runs_of(project)}
    assert set(runs) == set(MODELS)
    for r in runs.values():
        assert r.info.status == "FINISHED" and "test_acc" in r.data.metrics and r.data.tags["model_md5"]


def test_make_mnist_tutorial_runs_the_tutorials_mlp_as_an_experiment(tmp_path, template, tiny_mirror):
    """The README's way to the MNIST tutorial's numbers, on generated IDX data (MNIST has no
    offline source here): one DVC experiment with the tutorial's settings, the crop22 test among
    its metrics, one MLflow run with those params; the workspace keeps its outputs."""
    project = add_make(make_project(tmp_path / "project", template))
    missing = run(["make", "mnist-tutorial"], project, pipeline_env(), check=False)
    assert missing.returncode != 0 and "set MNIST_DIR to a folder holding MNIST's four IDX files" in missing.stderr
    run(["make", "mnist-tutorial", f"MNIST_DIR={tiny_mirror}"], project, pipeline_env(), timeout=900)
    assert not (project / "models").exists()  # --temp: the workspace is left as it was
    shown = run(["make", "-s", "exps"], project, {**pipeline_env(), "COLUMNS": "200"}).stdout
    assert "mnist-tutorial" in shown and "crop22" in shown
    (mlp,) = runs_of(project, "mnist")
    assert mlp.info.status == "FINISHED" and mlp.data.tags["dvc_exp_name"] == "mnist-tutorial"
    assert {k: mlp.data.params[k] for k in ("optimizer", "lr", "scheduler", "epochs", "batch_size", "shift")} == {
        "optimizer": "adam", "lr": "0.001", "scheduler": "none", "epochs": "10", "batch_size": "100", "shift": "0"}
    assert {"test_acc", "crop22_acc"} <= set(mlp.data.metrics), mlp.data.metrics
