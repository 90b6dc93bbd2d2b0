"""The code uses MLflow's and DVC's public APIs only: no `_`-prefixed name of theirs is imported
or reached as an attribute. (Where no API exists, moving a store, tracking/relocate.py edits
MLflow's schema by SQL, and tests/test_tracking.py checks that schema.)"""
from __future__ import annotations

import ast

from conftest import ROOT

SRC = ROOT / "src" / "mnistflow"


def private_uses(tree: ast.AST, own: set[str]) -> list[str]:
    """Private names of other packages: `from mlflow.x import _y`, `mlflow._x`, `obj._y()` where
    `_y` is not a name of ours, `self` and `cls` aside."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"mlflow", "dvc"}:
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"from {node.module}")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in {"mlflow", "dvc"}
                      and any(p.startswith("_") for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base not in {"self", "cls"} and node.attr not in own:
                found.append(f"{ast.unparse(node)}")
    return found


def own_names() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def test_no_private_mlflow_or_dvc_name_is_used():
    own = own_names()
    uses = {str(p.relative_to(ROOT)): found for p in sorted(SRC.rglob("*.py"))
            if (found := private_uses(ast.parse(p.read_text()), own))}
    assert uses == {}


def test_a_private_use_is_caught():
    code = ("from mlflow.tracking.context.registry import resolve_tags\nfrom mlflow.pytorch import _load_pyfunc\n"
            "import mlflow._private\nx = dataset._to_mlflow_entity()\ny = self._mine\n")
    assert private_uses(ast.parse(code), own=set()) == [
        "from mlflow.pytorch import _load_pyfunc", "mlflow._private", "dataset._to_mlflow_entity"]
