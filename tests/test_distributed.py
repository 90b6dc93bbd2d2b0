"""Data-parallel training: `train.nproc: 2` under torchrun on the CPU (gloo), through the real
`dvc repro`, against the same train stage with one process."""
from __future__ import annotations

import json
import sys

import mlflow
import pytest
import torch

from conftest import ROOT, dvc, make_project, pipeline_env, run, runs_of, set_params
from mnistflow.tracking import file_md5

pytestmark = pytest.mark.e2e
# Two processes take the halves of the batches one process takes, so the runs differ only in
# the order of float sums: on 100 validation images, at most 3 may change sides.
TOLERANCE = 0.03



def test_two_processes_train_like_one_and_reproduce_to_the_byte(tmp_path, template):
    project = make_project(tmp_path / "project", template, mlp={"epochs": 3})
    set_params(project, "train.models", ["mlp"])
    # fp32: bf16 rounds a half batch's products otherwise than a whole one's (by far more than 1e-4)
    set_params(project, "train.amp", False)
    # One process: the train stage's own command (the first MLflow run), what two must match.
    run([sys.executable, "stages/train.py", "mlp", "data/processed", "one.pt", "one.json", "one.csv"], project,
        pipeline_env())
    single = json.loads((project / "one.json").read_text())
    single_weights = torch.load(project / "one.pt", weights_only=True)

    set_params(project, "train.nproc", 2)
    out = dvc(project, "repro")
    assert "Running stage 'train@mlp'" in out.stdout and "mlp epoch 3/3" in out.stderr
    assert out.stderr.count("mlp epoch 3/3") == 1  # rank 1 trains too, but only rank 0 speaks
    runs = runs_of(project)
    assert len(runs) == 2  # one run for the two processes
    ddp = runs[-1]
    assert ddp.info.status == "FINISHED" and ddp.data.params["world_size"] == "2"
    assert runs[0].data.params["world_size"] == "1" and runs[0].data.params["precision"] == "fp32"
    assert ddp.data.tags["model_md5"] == file_md5(project / "models/mlp.pt")
    two = json.loads((project / "reports/train/mlp.json").read_text())
    assert abs(two["val_acc"] - single["val_acc"]) <= TOLERANCE
    # The gradients were all-reduced: the weights are one process's, up to rounding (a process
    # that had trained on its half of the data alone would be far off).
    for key, value in torch.load(project / "models/mlp.pt", weights_only=True).items():
        assert torch.allclose(value, single_weights[key], atol=1e-4), key
    assert "test_acc" in ddp.data.metrics  # evaluate found rank 0's run by the weights' md5
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    (logged,) = mlflow.search_logged_models(experiment_ids=[ddp.info.experiment_id],
                                            filter_string=f"source_run_id = '{ddp.info.run_id}'", output_format="list")
    loaded = mlflow.pytorch.load_model(logged.model_uri, dst_path=str(tmp_path))
    assert sum(p.numel() for p in loaded.parameters()) > 0

    weights = (project / "models/mlp.pt").read_bytes()
    dvc(project, "repro", "--force", "--single-item", "train@mlp")
    assert (project / "models/mlp.pt").read_bytes() == weights
    assert len(runs_of(project)) == 3


def test_a_diverging_loss_stops_every_process(tmp_path, template):
    project = make_project(tmp_path / "project", template, mlp={"optimizer": "sgd", "lr": 1e12})
    set_params(project, "train.models", ["mlp"])
    set_params(project, "train.nproc", 2)
    out = dvc(project, "repro", check=False)
    assert out.returncode != 0
    assert out.stderr.count("mlp: the loss became NaN or infinite at epoch 1, batch") == 1
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr
    (failed,) = runs_of(project)
    assert failed.info.status == "FAILED" and not (project / "models/mlp.pt").exists()


WORKER = """
import os, sys, torch, torch.distributed as dist
from mnistflow.core.errors import MnistflowError
from mnistflow.train.distributed import World, peers_or_stop
dist.init_process_group("gloo")
rank = dist.get_rank()
said = open(f"rank{rank}.txt", "w")  # a file each: torchrun interleaves the workers' output
try:
    with peers_or_stop(World(rank, 2)):
        for step in range(50):
            if sys.argv[1] == "kill" and rank == 1 and step == 3:
                os._exit(1)  # a peer gone mid-training
            if sys.argv[1] == "bug" and step == 3:
                raise RuntimeError("a bug whose message names gloo")  # every peer still there
            dist.all_reduce(torch.ones(100))
except MnistflowError as exc:
    said.write(f"ours: {exc}")
except RuntimeError as exc:
    said.write(f"raised: {exc}")
said.close()
"""


@pytest.mark.parametrize("case", ["kill", "bug"])
def test_a_peer_gone_is_told_from_an_error_by_asking_the_peers_not_by_reading_the_message(tmp_path, case):
    (tmp_path / "worker.py").write_text(WORKER)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "worker.py", case],
        tmp_path, {**pipeline_env(), "PYTHONPATH": str(ROOT / "src")}, check=False, timeout=120)
    said = {r: (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    if case == "kill":
        assert said[0].startswith("ours: training process 0 of 2: another one is gone") and said[1] == "", said
    else:
        assert said == {r: "raised: a bug whose message names gloo" for r in (0, 1)}
