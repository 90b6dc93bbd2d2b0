"""The tutorials' other models through the real pipeline: two_layer (its own autograd ReLU) and
dynamic (a depth drawn per pass) train, evaluate and are logged; two clean runs of the pipeline
give byte-identical outputs, dynamic's weights included."""
import json

import pytest

from conftest import make_project, runs_of
from mnistflow.reprocheck import compare, pipeline_run

pytestmark = pytest.mark.e2e
MODELS = ["two_layer", "dynamic"]


def test_two_layer_and_dynamic_train_and_reproduce_byte_for_byte(tmp_path, tiny_mirror):
    project = make_project(tmp_path / "project", tiny_mirror)
    first, second = (pipeline_run(project, tmp_path / name, tiny_mirror, MODELS) for name in ("first", "second"))
    assert compare(first, second) == []
    lock, _ = first
    assert {"train@two_layer", "train@dynamic", "evaluate@two_layer", "evaluate@dynamic"} <= set(lock["stages"])
    for model in MODELS:  # learned something (chance is 0.1)
        assert json.loads((tmp_path / f"first/reports/eval/{model}.json").read_text())["test"] > 0.3
    runs = {r.info.run_name: r for r in runs_of(tmp_path / "first")}
    assert set(runs) == set(MODELS)
    for run in runs.values():
        assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics and run.data.tags["model_md5"]
