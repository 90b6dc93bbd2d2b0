"""dvc.yaml's deps cannot drift from the code: each stage declares exactly the src/mnistflow
modules its script imports, directly or through each other (lazy imports included); a
`stage@model` stage the module of its model alone (the registry imports it by name)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
# Only refuses a Python without the project's packages; it shapes no output.
NOT_A_DEP = {"src/mnistflow/__init__.py"}
# create_model imports mnistflow.models.<name> by name: a stage that makes a model loads its module.
REGISTRY = SRC / "mnistflow/models/registry.py"


def package_files(root: Path = SRC / "mnistflow") -> dict[str, set[str]]:
    """Each sub-package folder and its modules, as dvc.yaml names them."""
    return {str(d.relative_to(ROOT)): {str(f.relative_to(ROOT)) for f in d.glob("*.py")}
            for d in root.iterdir() if (d / "__init__.py").is_file()}


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def imported_files(script: Path, model: str | None = None) -> set[str]:
    """The src/mnistflow files importing `script` loads, as dvc.yaml would name them; with
    `model`, the stage makes that model (the registry imports its module)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path == REGISTRY and model:
            model_file = SRC / "mnistflow/models" / f"{model}.py"
            if model_file not in seen:
                seen.add(model_file)
                todo.append(model_file)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                parts = name.split(".")
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                for found in filter(None, (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))):
                    if parts[0] == "mnistflow" and found not in seen:
                        seen.add(found)
                        todo.append(found)
    named = {str(p.relative_to(ROOT)) for p in seen} - NOT_A_DEP
    for folder, files in package_files().items():  # a sub-package used whole is one dep: its folder
        if files <= named:
            named = (named - files) | {folder}
    return named


def declared_stages() -> dict[str, tuple[Path, set[str]]]:
    """Each stage's script and src deps; a foreach stage once per registered model, as
    `train@cnn`, with `${item}` filled in."""
    from mnistflow.models import model_names

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        for model in (model_names() if "foreach" in stage else [None]):
            do = stage.get("do", stage)
            script = next(word for word in do["cmd"].split() if word.startswith("stages/"))
            deps = {d.replace("${item}", model or "") for d in do["deps"] if d.startswith("src/mnistflow")}
            out[f"{name}@{model}" if model else name] = ROOT / script, deps
    return out


def drift(script: Path, declared: set[str], model: str | None = None) -> dict[str, list[str]]:
    imported = imported_files(script, model)
    return {k: sorted(v) for k, v in (("undeclared", imported - declared), ("not imported", declared - imported)) if v}


@pytest.mark.parametrize("stage", sorted(declared_stages()))
def test_a_stage_declares_exactly_the_modules_its_script_imports(stage):
    script, declared = declared_stages()[stage]
    assert drift(script, declared, stage.partition("@")[2] or None) == {}


def test_a_stage_that_makes_one_model_depends_on_that_model_alone():
    """train@cnn loads models/cnn.py and not the others (nor the folder): editing another model
    re-runs nothing of it."""
    for stage in ("train", "evaluate"):
        script, declared = declared_stages()[f"{stage}@cnn"]
        models = sorted(d for d in imported_files(script, "cnn") if d.startswith("src/mnistflow/models"))
        assert models == [f"src/mnistflow/models/{m}.py" for m in ("__init__", "cnn", "inference", "registry")]
        assert models == sorted(d for d in declared if d.startswith("src/mnistflow/models"))


def test_an_import_without_its_dep_is_caught(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from mnistflow.core.io import write_bytes\n")
    declared = {"src/mnistflow/core/__init__.py", "src/mnistflow/core/io.py", "src/mnistflow/core/errors.py"}
    assert drift(script, declared) == {}
    script.write_text("from mnistflow.core.io import write_bytes\n\ndef main():\n    from mnistflow.report.plots import loss_curve\n")
    assert drift(script, declared) == {"undeclared": ["src/mnistflow/report/__init__.py", "src/mnistflow/report/plots.py"]}
    # models/__init__ loads the registry, no model; a stage that makes a model loads its module
    script.write_text("from mnistflow.models import create_model\n")
    undeclared = drift(script, declared)["undeclared"]
    assert [d for d in undeclared if d.startswith("src/mnistflow/models")] == [
        "src/mnistflow/models/__init__.py", "src/mnistflow/models/registry.py"]
    assert "src/mnistflow/models/lenet.py" in drift(script, declared, "lenet")["undeclared"]
    assert "src/mnistflow/models/cnn.py" not in drift(script, declared, "lenet")["undeclared"]


def test_the_report_template_is_a_dep_of_every_stage_that_renders_it():
    """page.py reads templates/: a stage that imports it declares the folder (or the file)."""
    template = "src/mnistflow/report/templates/index.html.j2"
    assert (ROOT / template).is_file() and template.rsplit("/", 2)[-2] in (ROOT / "src/mnistflow/report/page.py").read_text()
    renders = [name for name, (script, _) in declared_stages().items()
               if {"src/mnistflow/report", "src/mnistflow/report/page.py"} & imported_files(script)]
    assert renders == ["visualize"]
    for name in renders:
        declared = declared_stages()[name][1]
        assert "src/mnistflow/report" in declared or template in declared, name


# In one fresh Python, as the stages load them: check_params's whole run, then each stage's modules.
STAGE_IMPORTS = """
import json, runpy, sys
def loaded(*names):
    return sorted(n for n in names if n in sys.modules)
sys.argv = ["stages/check_params.py"]  # no output paths: it validates and writes nothing
try:
    runpy.run_path("stages/check_params.py", run_name="__main__")
except SystemExit:
    pass
seen = {"check_params": loaded("torch", "mlflow", "mnistflow.models.cnn")}
import mnistflow.train.training, mnistflow.tracking
seen["train"] = loaded("matplotlib", "mnistflow.report.plots", "mnistflow.tracking.ui", "torchmetrics", "mlflow")
from mnistflow.core.device import set_determinism
set_determinism(0, True)
seen["determinism on the CPU"] = loaded("torch._inductor.config")
import mnistflow.report.visualize
seen["visualize"] = loaded("torchmetrics", *(f"mnistflow.models.{m}" for m in ("cnn", "lenet", "mlp", "dynamic")))
import mnistflow.evaluate.evaluation
seen["evaluate"] = loaded("torchmetrics")
print(json.dumps(seen))
"""


def test_each_stage_loads_only_what_it_uses():
    """check_params neither torch nor MLflow (nor any model); training no figure, UI or metrics
    code, and MLflow only when it records; visualize no model code; torchmetrics the evaluate
    stage alone; deterministic mode on the CPU not torch's compiler config."""
    out = subprocess.run([sys.executable, "-c", STAGE_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert json.loads(out.stdout or "null") == {"check_params": [], "train": [], "determinism on the CPU": [],
                                                "visualize": [], "evaluate": ["torchmetrics"]}, out.stderr
