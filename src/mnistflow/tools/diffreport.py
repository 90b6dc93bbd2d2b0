"""What a change did to the models: the working tree's results against BASE's, as Markdown for a
pull request. From DVC's own views of both revisions (`dvc params diff`, `dvc plots diff`, the
two `dvc.lock` files, the evaluation outputs through `dvc.api.read`), the changed plots drawn
offline with vl-convert (no browser, no network).

    mnistflow diff-report [BASE] [--out FOLDER]

Writes FOLDER/report.md (default diff-report/) and a PNG per changed plot beside it, and
summary.md, the same with the images named (for a comment); appends that to $GITHUB_STEP_SUMMARY
when it is set. BASE defaults to main."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mnistflow.cli import Parser
from mnistflow.core.errors import MnistflowError
from mnistflow.core.io import write_bytes

# (key in reports/eval/<model>.all.json, column): per model and test set, before and after
SCALARS = (("acc", "accuracy"), ("macro_f1", "macro F1"), ("ece", "calibration error"))


def _dvc(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines() or ["no message"]
        raise MnistflowError(f"dvc {' '.join(args)} failed: {said[-1]}")
    return proc.stdout


def lock_at(rev: str | None) -> dict:
    """The stages of dvc.lock at `rev` (None: the working tree); {} where it has none."""
    if rev is None:
        text = Path("dvc.lock").read_text() if Path("dvc.lock").exists() else ""
    else:
        proc = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True)
        text = proc.stdout if proc.returncode == 0 else ""
    return (yaml.safe_load(text) or {}).get("stages", {})


def changed_stages(base: dict, head: dict) -> list[str]:
    """Stages whose lock entry differs (a dep, param or output hash: what re-ran), in head's order,
    then those head no longer has."""
    return [name for name in head if head[name] != base.get(name)] + [name for name in base if name not in head]


def weights(lock: dict) -> dict[str, str]:
    """Each trained model's weights md5, from its train stage's outputs."""
    return {name.split("@", 1)[1]: out["md5"] for name, stage in lock.items() if name.startswith("train@")
            for out in stage.get("outs", []) if out["path"].startswith("models/")}


def evaluation(model: str, rev: str | None) -> dict | None:
    """reports/eval/<model>.all.json at `rev` (None: the working tree); None where it is not to be had."""
    path = f"reports/eval/{model}.all.json"
    try:
        if rev is None:
            return json.loads(Path(path).read_text())
        import dvc.api

        return json.loads(dvc.api.read(path, rev=rev))
    except Exception:  # noqa: BLE001  (not in that revision, or in no cache or remote we reach)
        return None


def metrics_table(base_rev: str, models: list[str]) -> list[str]:
    """Markdown rows: per model and test set, each scalar before and after, and the change."""
    rows = ["| model | set | " + " | ".join(column for _, column in SCALARS) + " |", "|---|---|" + "---|" * len(SCALARS)]
    for model in models:
        before, after = evaluation(model, base_rev) or {}, evaluation(model, None) or {}
        for test_set in dict.fromkeys([*after, *before]):
            cells = [_change((before.get(test_set) or {}).get(key), (after.get(test_set) or {}).get(key))
                     for key, _ in SCALARS]
            rows.append(f"| {model} | {test_set} | " + " | ".join(cells) + " |")
    return rows


def _change(old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return f"{_num(old)} → {_num(new)}"
    return f"{new:.4f} (same)" if new == old else f"{old:.4f} → {new:.4f} (**{new - old:+.4f}**)"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def fetch_base(base_rev: str) -> None:
    """BASE's outputs into this clone's DVC cache from its default remote: `dvc plots diff` reads
    no remote. `dvc fetch` takes no revision, so it runs in a git worktree of BASE that shares this
    cache and remote. Without a remote nothing happens; what the remote lacks stays missing."""
    from mnistflow.tracking.dvc_internals import default_remote_url

    url = default_remote_url()
    if url is None:
        return
    name, cache = _dvc("remote", "default").strip(), _dvc("cache", "dir").strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        try:
            subprocess.run(["git", "worktree", "add", "--quiet", "--detach", str(tree), base_rev], check=True,
                           capture_output=True)
            if Path(".dvc/config.local").exists():  # the remote's credentials, where they are kept
                shutil.copy(".dvc/config.local", tree / ".dvc/config.local")
            for args in (["cache", "dir", "--local", cache], ["remote", "modify", "--local", name, "url", url]):
                subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tree, check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "dvc", "fetch", "--quiet"], cwd=tree, capture_output=True)
        except (subprocess.CalledProcessError, OSError) as exc:  # the plots then show what the cache holds
            print(f"could not fetch {base_rev}'s outputs: {exc}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)


def plot_changes(base_rev: str, out: Path) -> list[tuple[str, str]]:
    """(plot id, PNG file name) for each DVC plot whose data differs between BASE and the working
    tree, both revisions drawn in one figure as the project's templates draw them."""
    import vl_convert

    shown = json.loads(_dvc("plots", "diff", base_rev, "--json"))
    drawn = []
    for plot_id, entries in (shown.get("data") or {}).items():
        for entry in entries:
            if entry.get("type") != "vega":
                continue
            spec = entry["content"]
            values = (spec.get("data") or {}).get("values") or []
            by_rev: dict[str, list] = {}
            for value in values:
                by_rev.setdefault(value.get("rev"), []).append(
                    json.dumps({k: v for k, v in value.items() if k != "rev"}, sort_keys=True))
            if len({tuple(sorted(v)) for v in by_rev.values()}) <= 1 and len(by_rev) > 1:
                continue  # the same data in both revisions
            name = re.sub(r"[^A-Za-z0-9]+", "_", plot_id).strip("_").lower() + ".png"
            write_bytes(out / name, vl_convert.vegalite_to_png(spec, scale=1))
            drawn.append((plot_id, name, "" if len(by_rev) > 1 else
                          f" ({base_rev}'s data is in no cache or remote we reach: this revision alone)"))
    return drawn


def mlflow_links(md5s: dict[str, str]) -> dict[str, str]:
    """Model -> the page of the run that trained its weights, where a tracking server is
    configured (a local store's pages are `make ui`'s, not a reviewer's)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return {}
    from mnistflow.tracking import store
    from mnistflow.tracking.runs import preferred_run
    from mnistflow.tracking.ui import run_url

    os.environ["MLFLOW_UI_URL"] = uri  # the server's own pages, for a reviewer
    links = {}
    try:
        client = store.client()
        exps = [e.experiment_id for e in client.search_experiments()]
        for model, md5 in md5s.items():
            run = preferred_run(client.search_runs(exps, filter_string=f"tags.model_md5 = '{md5}'",
                                                   order_by=["attributes.start_time DESC"]))
            if run is not None:
                links[model] = run_url(run.info.experiment_id, run.info.run_id)
    except Exception as exc:  # noqa: BLE001  (the report goes out without links rather than not at all)
        print(f"no MLflow links: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return links


def report(base_rev: str, out: Path) -> str:
    """The Markdown report of the working tree against `base_rev`; its images written to `out`."""
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base_rev}^{{commit}}"],
                      capture_output=True).returncode != 0:
        raise MnistflowError(f"no commit {base_rev!r} to compare with (git fetch it, or name another: "
                             f"mnistflow diff-report BASE)")
    base, head = lock_at(base_rev), lock_at(None)
    params = json.loads(_dvc("params", "diff", base_rev, "--json") or "{}")
    param_rows = [(key, change.get("old"), change.get("new")) for changes in params.values()
                  for key, change in changes.items()]
    stages = changed_stages(base, head)
    if not stages and not param_rows:
        return f"Nothing changed against `{base_rev}`: the same params, and every stage's inputs and outputs are its.\n"
    old_w, new_w = weights(base), weights(head)
    models = list(dict.fromkeys([*new_w, *old_w]))
    lines = [f"## What this change did to the models (against `{base_rev}`)", ""]
    if param_rows:
        lines += ["### Params", "", "| param | before | after |", "|---|---|---|",
                  *(f"| `{k}` | {_cell(old)} | {_cell(new)} |" for k, old, new in param_rows), ""]
    lines += ["### Stages that re-ran", "", *(f"- `{s}`: {_outcome(base.get(s), head.get(s))}" for s in stages), ""]
    lines += ["### Test sets", "", *metrics_table(base_rev, models), ""]
    links = mlflow_links(new_w)
    lines += ["### Weights", "", "| model | md5 before | md5 after |" + (" MLflow run |" if links else ""),
              "|---|---|---|" + ("---|" if links else "")]
    for model in models:
        old, new = old_w.get(model, "-"), new_w.get(model, "-")
        link = f" [run]({links[model]}) |" if model in links else (" |" if links else "")
        lines.append(f"| {model} | `{old}` | `{new}`{' (changed)' if old != new else ''} |{link}")
    fetch_base(base_rev)
    drawn = plot_changes(base_rev, out)
    lines += ["", "### Plots that changed", ""]
    if drawn:
        lines += ["Each with both revisions unless it says otherwise; the PNGs are beside report.md (in CI, "
                  "the `diff-report` artifact).", ""]
    lines += [f"**{plot_id}**{note}\n\n![{plot_id}]({name})\n" for plot_id, name, note in drawn] or ["none", ""]
    return "\n".join(lines) + "\n"


def without_images(text: str) -> str:
    """The report for a job summary or a comment, which cannot show the folder's images: each named."""
    return re.sub(r"!\[[^\]]*\]\(([^)]+\.png)\)", r"`\1` (in the `diff-report` artifact)", text)


def _outcome(before: dict | None, after: dict | None) -> str:
    if before is None or after is None:
        return "new" if before is None else "removed"
    outs = lambda stage: {o["path"]: o.get("md5") for o in stage.get("outs", [])}  # noqa: E731
    changed = [path for path, md5 in outs(after).items() if outs(before).get(path) != md5]
    return "outputs as before" if not changed else "changed " + ", ".join(f"`{p}`" for p in changed)


def _cell(value) -> str:
    return "-" if value is None else f"`{json.dumps(value) if isinstance(value, (list, dict)) else value}`"


def main(argv: list[str] | None = None, prog: str = "mnistflow diff-report") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", default="main", help="the revision to compare with (default: main)")
    parser.add_argument("--out", type=Path, default=Path("diff-report"),
                        help="folder for report.md and its images (default: diff-report)")
    args = parser.parse_args(argv)
    text = report(args.base, args.out)
    write_bytes(args.out / "report.md", text.encode())
    write_bytes(args.out / "summary.md", without_images(text).encode())  # for a comment
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a") as f:  # GitHub's job summary: appended, as every step does
            f.write(without_images(text))
    print(text, end="")
    print(f"(written to {args.out / 'report.md'})", file=sys.stderr)
