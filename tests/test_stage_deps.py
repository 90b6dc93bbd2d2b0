"""dvc.yaml's deps cannot drift from the code: each stage declares exactly the src/mnistflow
modules its script imports, directly or through each other (lazy imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE_DIRS = ["src/mnistflow/models"]  # declared as one dep: the registry and every model
# Only refuses a Python without the project's packages; it shapes no output.
NOT_A_DEP = {"src/mnistflow/__init__.py"}


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
    return {next((d for d in PACKAGE_DIRS if f.startswith(d + "/")), f) for f in named}


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
    script.write_text("from mnistflow.io import write_bytes\n")
    declared = {"src/mnistflow/io.py", "src/mnistflow/errors.py"}
    assert drift(script, declared) == {}
    script.write_text("from mnistflow.io import write_bytes\n\ndef main():\n    from mnistflow.plots import loss_curve\n")
    assert drift(script, declared) == {"undeclared": ["src/mnistflow/plots.py"]}
    script.write_text("import mnistflow.models\n")
    assert drift(script, declared) == {"undeclared": ["src/mnistflow/models"], "not imported": ["src/mnistflow/io.py"]}
