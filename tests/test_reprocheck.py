"""The reproducibility check itself: it must catch a stage made non-deterministic on purpose."""
import subprocess
import sys

import pytest

from conftest import ROOT, make_project, pipeline_env
from mnistflow.tools.reprocheck import compare

LOCK = {"stages": {"train@mlp": {"outs": [{"path": "models/mlp.pt", "md5": "aa"}]},
                   "preprocess": {"outs": [{"path": "data/processed/train.pt", "md5": "bb"}]}}}


def test_compare_names_each_differing_output_and_metric():
    other = {"stages": {"train@mlp": {"outs": [{"path": "models/mlp.pt", "md5": "cc"}]},
                        "preprocess": {"outs": [{"path": "data/processed/train.pt", "md5": "bb"}]}}}
    assert compare((LOCK, {"m": 1}), (LOCK, {"m": 1})) == []
    diffs = compare((LOCK, {"m": 1}), (other, {"m": 2}))
    assert diffs[0] == "train@mlp: models/mlp.pt: aa != cc"
    assert len(diffs) == 2 and diffs[1].startswith("metrics differ")


@pytest.mark.e2e
def test_an_unseeded_shuffle_is_caught(tmp_path, template):
    project = make_project(tmp_path / "project", template)
    splits = project / "src/mnistflow/data/preprocess.py"
    seeded = "order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))"
    assert seeded in splits.read_text()
    splits.write_text(splits.read_text().replace(seeded, "order = torch.randperm(len(train))"))
    subprocess.run(["git", "commit", "-q", "-am", "unseeded split"], cwd=project, check=True, env=pipeline_env())
    # preprocess, where the split is drawn, and what it depends on: the whole pipeline is CI's `make repro-check`
    proc = subprocess.run([sys.executable, "-m", "mnistflow.tools.reprocheck", "--repo", str(project), "--target",
                           "preprocess"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**pipeline_env(), "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT reproducible" in proc.stdout
    assert "preprocess: data/processed/train.pt" in proc.stdout
