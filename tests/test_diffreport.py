"""The CI a team adopts (.github/workflows/pipeline.yml, .gitlab-ci.yml): the files pass their
platforms' schemas and zizmor's audit; their shell steps, run in order as the runner would in
fresh clones of a bare origin with a local DVC remote, pass the gate and report nothing on an
unchanged clone, report one model's change on a branch that changed its lr with its dvc.lock,
and fail the gate naming the outputs on a branch that kept the old dvc.lock."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT, add_make, commit, make_project, pipeline_env, run, set_params
from mnistflow.tools.diffreport import changed_stages, weights, without_images
from mnistflow.tools.gate import differences

GITHUB = ROOT / ".github/workflows/pipeline.yml"
GITLAB = ROOT / ".gitlab-ci.yml"
LOCK = {"train@mlp": {"cmd": "train mlp", "outs": [{"path": "models/mlp.pt", "md5": "aa"}]},
        "train@cnn": {"cmd": "train cnn", "outs": [{"path": "models/cnn.pt", "md5": "bb"}]}}


def test_the_stages_whose_lock_entry_differs_are_those_that_re_ran_and_the_gate_names_outputs():
    head = {**LOCK, "train@mlp": {"cmd": "train mlp", "outs": [{"path": "models/mlp.pt", "md5": "cc"}]},
            "visualize": {"cmd": "draw"}}
    assert changed_stages(LOCK, head) == ["train@mlp", "visualize"]
    assert changed_stages(head, LOCK) == ["train@mlp", "visualize"]  # a stage gone counts too
    assert changed_stages(LOCK, LOCK) == [] and differences(LOCK, LOCK) == []
    assert weights(LOCK) == {"mlp": "aa", "cnn": "bb"}
    assert without_images("**Validation loss**\n\n![Validation loss](validation_loss.png)\n") == \
        "**Validation loss**\n\n`validation_loss.png` (in the `diff-report` artifact)\n"
    assert differences(LOCK, head) == ["train@mlp: models/mlp.pt: committed aa, computed here cc",
                                       "visualize: not in the committed dvc.lock"]
    assert differences(LOCK, {**LOCK, "train@cnn": {**LOCK["train@cnn"], "cmd": "train cnn --fast"}}) == [
        "train@cnn: its code or params differ from what the committed dvc.lock records (outputs equal)"]


@pytest.mark.parametrize("args, schema", [([str(GITHUB)], "vendor.github-workflows"), ([str(GITLAB)], "vendor.gitlab-ci")])
def test_the_workflows_pass_their_platforms_schema(args, schema):
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([bin_dir / "check-jsonschema", "--builtin-schema", schema, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_in_the_github_workflow():
    proc = subprocess.run([Path(sys.executable).parent / "zizmor", "--offline", "--persona", "pedantic", str(GITHUB)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "No findings" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# What the runner does for the `uses:` steps and the platform's variables: the checkout is a
# clone of the branch, setup-python and the pip cache are this checkout's venv (add_make), the
# DVC cache is the one an earlier run of the job left (copied), no secrets, no token.
def github_steps() -> list[dict]:
    return [s for s in yaml.safe_load(GITHUB.read_text())["jobs"]["reproduce"]["steps"] if "run" in s]


def wanted(condition: str, outcomes: dict, failed: bool) -> bool:
    """GitHub's `if:` for the conditions the workflow uses; anything else (a fork test, a token) is false."""
    terms = [t.strip() for t in condition.removeprefix("${{").removesuffix("}}").split("&&")]
    known = {"!cancelled()": True, "always()": True, "success()": not failed,
             "github.event_name == 'pull_request'": True}
    for term in terms:
        if term in known:
            if not known[term]:
                return False
        elif term.startswith("steps.") and term.endswith(".outcome == 'success'"):
            if outcomes.get(term.split(".")[1]) != "success":
                return False
        else:
            return False
    return True


def run_github(clone: Path, env: dict) -> tuple[bool, str]:
    outcomes, failed, log = {}, False, []
    for step in github_steps():
        if not wanted(step.get("if", "success()"), outcomes, failed):
            outcome = "skipped"
        else:
            step_env = {k: "" if "secrets." in str(v) or "github.token" in str(v) else str(v)
                        for k, v in (step.get("env") or {}).items()}
            proc = run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], clone, {**env, **step_env}, check=False)
            outcome = "success" if proc.returncode == 0 else "failure"
            failed |= outcome == "failure"
            log.append(f"## {step['name']}: {outcome}\n{proc.stdout}{proc.stderr}")
        outcomes[step.get("id", step["name"])] = outcome
    return not failed, "\n".join(log)


def run_gitlab(clone: Path, env: dict) -> tuple[bool, str]:
    config = yaml.safe_load(GITLAB.read_text())
    script = "\n".join([*config["default"]["before_script"], *config["reproduce"]["script"]])
    proc = run(["bash", "-e", "-o", "pipefail", "-c", script], clone, env, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def origin(tmp_path_factory, trained):
    """A bare origin with main (its outputs pushed to the DVC remote that .dvc/config names, a
    folder beside the clones) and two branches that set train.mlp.lr to 0.004: `faster-mlp` with
    the dvc.lock that `dvc repro` wrote (its outputs not pushed), `stale-lock` with main's."""
    root = tmp_path_factory.mktemp("ci")
    dev = make_project(root / "dev", trained[0])
    commit(dev, "baseline")
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "push", "--quiet"], dev, pipeline_env())
    run(["git", "clone", "-q", "--bare", str(dev), str(root / "origin.git")], root)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], dev)
    for branch, repro in (("stale-lock", False), ("faster-mlp", True)):
        run(["git", "checkout", "-q", "-b", branch, "main"], dev)
        set_params(dev, "train.mlp.lr", 0.004)
        if repro:
            run([*dvc, "repro"], dev, pipeline_env())
        commit(dev, f"mlp lr 0.004 ({branch})")
        run(["git", "push", "-q", "origin", branch], dev)
    return root


def runner_clone(origin: Path, name: str, branch: str, cache_from: Path | None = None) -> Path:
    clone = origin / name
    run(["git", "clone", "-q", "-b", branch, str(origin / "origin.git"), str(clone)], origin)
    add_make(clone)
    # The venv and plots page are this checkout's and current: `make setup` in the clone must not
    # rebuild them (a clone's files are as new as the clone).
    for made_from in ("src/mnistflow/tools/plotpage.py", "requirements.txt", "requirements-test.txt", "pyproject.toml"):
        os.utime(clone / made_from, (0, 0))
    if cache_from is not None:
        shutil.copytree(cache_from / ".dvc/cache", clone / ".dvc/cache", dirs_exist_ok=True)
    return clone


@pytest.mark.e2e
@pytest.mark.slow  # a few minutes: make test-slow (CI) runs it
@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_the_workflow_gates_and_reports_an_unchanged_clone_a_changed_lr_and_a_stale_lock(origin, platform, tmp_path):
    steps = run_github if platform == "github" else run_gitlab
    summary = tmp_path / "summary.md"
    env = {**pipeline_env(), "GITHUB_BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(summary),
           "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"}

    same = runner_clone(origin, f"{platform}-main", "main")
    ok, log = steps(same, env)
    assert ok, log
    assert "reproducible: dvc.lock is what this runner computed" in log
    report = (same / "diff-report/report.md").read_text()
    assert report.startswith("Nothing changed against `origin/main`") and len(report.splitlines()) == 1, report

    changed = runner_clone(origin, f"{platform}-faster", "faster-mlp")
    ok, log = steps(changed, env)
    assert ok, log
    assert "Running stage 'train@mlp'" in log and "Running stage 'train@cnn'" not in log  # computed here, not pulled
    report = (changed / "diff-report/report.md").read_text()
    assert "| `train.mlp.lr` | `0.001` | `0.004` |" in report
    assert "- `train@mlp`: changed `models/mlp.pt`" in report and "train@cnn" not in report
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in report.splitlines()
            if line.startswith(("| mlp |", "| cnn |", "| lenet |")) and "`" not in line}
    sets = ("test", "crop22", "crop18")
    assert "→" in rows[("mlp", "crop22")], rows  # mlp's accuracies moved (on the tiny data, clean test is 1.0 either way)
    assert all(rows[(m, s)].count("(same)") == 3 for m in ("cnn", "lenet") for s in sets), rows
    images = sorted((changed / "diff-report").glob("*.png"))
    assert {p.name for p in images} >= {"validation_loss.png", "reports_confusion_mlp_confusion_crop22_csv.png"}
    assert not any("confusion_cnn" in p.name for p in images)  # cnn's confusion matrices are as they were
    for image in images:
        assert f"]({image.name})" in report
        with Image.open(image) as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 100
    named = (changed / "diff-report/summary.md").read_text()  # for the comment: images named, not embedded
    assert "![" not in named and "`validation_loss.png` (in the `diff-report` artifact)" in named
    if platform == "github":
        assert summary.read_text().endswith(named)  # the job summary got the report

    stale = runner_clone(origin, f"{platform}-stale", "stale-lock", cache_from=changed)  # the job's DVC cache
    ok, log = steps(stale, env)
    assert not ok
    assert "train@mlp: param train.mlp modified" in log  # the lock check
    assert "NOT reproducible" in log and "train@mlp: models/mlp.pt: committed " in log  # the gate, naming outputs
    assert "this runner: " in log and "numerics portable" in log
    assert (stale / "diff-report/report.md").exists()  # the report still written
