"""The code uses MLflow's and DVC's public APIs only: no `_`-prefixed name of theirs is imported
or reached as an attribute, and every module and name imported from them is on an allow-list, so
a new use of either library is a decision made here. Their internals live in one module each,
held to a contract by a test: DVC's in tracking/dvc_internals.py (tests/test_dvc_internals.py);
MLflow's UI-internal experiment tags in tracking/ui.py (tests/test_mlflow_ui.py reads them in the
UI), and moving a store, where MLflow has no API, in tracking/relocate.py, whose SQL on MLflow's
schema tests/test_tracking.py checks."""
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


# What any module may import from MLflow and DVC: (module, name), name None for `import module`.
ALLOWED = {
    ("mlflow", None), ("mlflow", "MlflowClient"), ("mlflow.data", None), ("mlflow.models", None), ("mlflow.exceptions", "MlflowException"),
    ("mlflow.models", "ModelSignature"), ("mlflow.pytorch", None),
    *(("mlflow.entities", n) for n in ("Dataset", "DatasetInput", "InputTag", "Metric", "Param", "RunStatus", "RunTag")),
    ("dvc.api", None),
    # the monitor `mlflow.start_run(log_system_metrics=True)` starts, started by run id (tracking/runs.py)
    ("mlflow.system_metrics.system_metrics_monitor", "SystemMetricsMonitor"),
    *(("mlflow.types.schema", n) for n in ("ColSpec", "DataType", "Map", "Schema", "TensorSpec")),
}
# DVC's internals, in their one module only.
INTERNALS = {"src/mnistflow/tracking/dvc_internals.py": {("dvc.repo", "Repo"), ("dvc.stage.serialize", "to_single_stage_lockfile")}}
UI_INTERNAL_TAGS = ("mlflow.sharedViewState", "mlflow.experimentKind")


def imports_of(tree: ast.AST) -> set[tuple[str, str | None]]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"mlflow", "dvc"}:
            found |= {(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names if a.name.split(".")[0] in {"mlflow", "dvc"}}
    return found


def code_files():
    return sorted(p for folder in ("src", "stages", "bench") for p in (ROOT / folder).rglob("*.py"))


def test_every_mlflow_and_dvc_import_is_on_the_allow_list_and_internals_stay_in_their_module():
    unlisted = {}
    for path in code_files():
        name = str(path.relative_to(ROOT))
        if extra := imports_of(ast.parse(path.read_text())) - ALLOWED - INTERNALS.get(name, set()):
            unlisted[name] = sorted(extra, key=str)
    assert unlisted == {}


def test_mlflows_ui_internal_tags_are_written_from_one_module():
    users = {str(p.relative_to(ROOT)) for p in code_files() if any(t in p.read_text() for t in UI_INTERNAL_TAGS)}
    assert users == {"src/mnistflow/tracking/ui.py"}


def test_an_unlisted_import_is_caught():
    code = "from dvc.repo import Repo\nimport mlflow.pytorch\nfrom mlflow.tracking.fluent import active_run\n"
    assert imports_of(ast.parse(code)) - ALLOWED == {("dvc.repo", "Repo"), ("mlflow.tracking.fluent", "active_run")}


def test_no_deprecation_is_ignored_wholesale():
    """pytest shows the deprecations that announce a library change; an ignored one names its
    message and the module that warns."""
    import tomllib

    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    for spec in filters:
        action, message, category, module = (spec.split(":") + [""] * 4)[:4]
        if action == "ignore" and "Deprecation" in category:
            assert message and module, spec
