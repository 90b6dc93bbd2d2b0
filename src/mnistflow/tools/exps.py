"""Which params gave which accuracy, readable at 120 columns and in a pipe: the experiments of
this commit (`dvc exp show --json`, DVC's public output), one table per model with what varied
for it (its own settings and the shared ones) and its accuracy per test set.

    mnistflow exps [--md | --csv] [--all-commits]
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

from mnistflow.core.errors import MnistflowError
from mnistflow.cli import Parser


def exp_show(all_commits: bool = False) -> list[dict]:
    """Every entry of `dvc exp show --json` (the workspace, the baseline commits, their
    experiments), each {"rev", "name", "data": {"params", "metrics", "deps", "outs", ...}}; an
    experiment also with its "state" in DVC's queue (queued, running, success, failed; None when
    it did not go through the queue)."""
    args = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MnistflowError(f"dvc exp show failed: {proc.stderr.strip() or proc.stdout.strip()}")
    entries = []
    for baseline in json.loads(proc.stdout):
        entries.append({**baseline, "name": "workspace" if baseline["rev"] == "workspace"
                        else baseline.get("name") or baseline["rev"][:7]})
        for group in baseline.get("experiments") or []:
            state = (group.get("executor") or {}).get("state")
            entries += [{**exp, "name": exp.get("name") or exp["rev"][:7], "state": state} for exp in group.get("revs", [])]
    return entries


def experiments(all_commits: bool = False) -> list[dict]:
    """Rows of `dvc exp show --json`, each {"name", "params" (flat, dotted), "metrics" (per
    model: set -> accuracy)}."""
    return [r for r in (_row(entry, entry["name"]) for entry in exp_show(all_commits)) if r is not None]


def _row(entry: dict, name: str) -> dict | None:
    data = entry.get("data") or {}
    if not data.get("params"):
        return None  # a queued or failed experiment: nothing to show
    params = _flat(data["params"].get("params.yaml", {}).get("data", {}))
    metrics = {path.removeprefix("reports/eval/").removesuffix(".json"): values.get("data", {})
               for path, values in (data.get("metrics") or {}).items() if path.startswith("reports/eval/")}
    return {"name": name, "params": params, "metrics": metrics}


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def tables(rows: list[dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per model: a header and rows of experiment, what varied for that model, accuracy per set.
    What varied: keys whose values differ between the rows that trained the model, its own
    (`train.<model>.`, shown without the prefix) and the shared ones (`train.`, `data.`, ...)."""
    out = {}
    models = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    for model in models:
        mine = [r for r in rows if model in r["metrics"]]
        keys = [k for k in dict.fromkeys(k for r in mine for k in r["params"])
                if (k.startswith(f"train.{model}.") or not _other_models_key(k, model))
                and len({json.dumps(r["params"].get(k)) for r in mine}) > 1]
        sets = list(dict.fromkeys(s for r in mine for s in r["metrics"][model]))
        header = ["experiment", *(k.removeprefix(f"train.{model}.") for k in keys), *sets]
        body = [[r["name"], *(_cell(r["params"].get(k)) for k in keys),
                 *(_cell(r["metrics"][model].get(s)) for s in sets)] for r in mine]
        out[model] = (header, body)
    return out


def _other_models_key(key: str, model: str) -> bool:
    """A key of another model's own section (train.cnn.lr for the mlp's table)."""
    parts = key.split(".")
    return parts[0] == "train" and len(parts) > 2 and parts[1] != model


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) >= 1e-3 or value == 0 else f"{value:g}"
    return str(value)


def render(model_tables: dict, fmt: str = "text") -> str:
    parts = []
    for model, (header, body) in model_tables.items():
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows([["model", *header], *([model, *row] for row in body)])
            parts.append(buf.getvalue().rstrip("\n"))
        elif fmt == "md":
            parts.append(f"**{model}**\n\n" + "\n".join(["| " + " | ".join(header) + " |",
                                                          "|" + "---|" * len(header),
                                                          *("| " + " | ".join(row) + " |" for row in body)]))
        else:
            widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
            line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            parts.append("\n".join([model, line(header), line(["-" * w for w in widths]), *map(line, body)]))
    return ("\n" if fmt == "csv" else "\n\n").join(parts) if parts else "no experiments with metrics yet"


def main(argv: list[str] | None = None, prog: str = "mnistflow exps") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--md", action="store_true", help="Markdown tables")
    group.add_argument("--csv", action="store_true", help="one CSV, a model column first")
    parser.add_argument("--all-commits", action="store_true", help="the experiments of every commit")
    args = parser.parse_args(argv)
    print(render(tables(experiments(args.all_commits)), "md" if args.md else "csv" if args.csv else "text"))


if __name__ == "__main__":
    from mnistflow.core.errors import run_stage

    run_stage(main)
