"""dvc.yaml's deps cannot drift from the code: each stage declares exactly the src/mnistflow
modules its script imports, directly or through each other (lazy imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
# Only refuses a Python without the project's packages; it shapes no output.
NOT_A_DEP = {"src/mnistflow/__init__.py"}


def package_files(root: Path = SRC / "mnistflow") -> dict[str, set[str]]:
    """Each sub-package folder and its modules, as dvc.yaml names them."""
    return {str(d.relative_to(ROOT)): {str(f.relative_to(ROOT)) for f in d.glob("*.py")}
            for d in root.iterdir() if (d / "__init__.py").is_file()}


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def imported_files(script: Path) -> set[str]:
    """The src/mnistflow files importing `script` loads, as dvc.yaml would name them."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
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
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        script = next(word for word in stage["cmd"].split() if word.startswith("stages/"))
        out[name] = ROOT / script, {d for d in stage["deps"] if d.startswith("src/mnistflow")}
    return out


def drift(script: Path, declared: set[str]) -> dict[str, list[str]]:
    imported = imported_files(script)
    return {k: sorted(v) for k, v in (("undeclared", imported - declared), ("not imported", declared - imported)) if v}


@pytest.mark.parametrize("stage", sorted(declared_stages()))
def test_a_stage_declares_exactly_the_modules_its_script_imports(stage):
    script, declared = declared_stages()[stage]
    assert drift(script, declared) == {}


def test_an_import_without_its_dep_is_caught(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from mnistflow.core.io import write_bytes\n")
    declared = {"src/mnistflow/core/__init__.py", "src/mnistflow/core/io.py", "src/mnistflow/core/errors.py"}
    assert drift(script, declared) == {}
    script.write_text("from mnistflow.core.io import write_bytes\n\ndef main():\n    from mnistflow.report.plots import loss_curve\n")
    assert drift(script, declared) == {"undeclared": ["src/mnistflow/report/__init__.py", "src/mnistflow/report/plots.py"]}
    # models/__init__ loads every model but not inference: the folder is one dep only with it
    script.write_text("import mnistflow.models\n")
    assert "src/mnistflow/models/registry.py" in drift(script, declared)["undeclared"]
    script.write_text("import mnistflow.models.inference\n")
    undeclared = drift(script, declared)["undeclared"]
    assert "src/mnistflow/models" in undeclared and not any(d.startswith("src/mnistflow/models/") for d in undeclared)


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
