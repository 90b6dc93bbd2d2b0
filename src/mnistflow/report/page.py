"""The report page, `reports/index.html`, from its template (templates/index.html.j2): one
static file with every figure, that opens offline. Only what the inputs fix goes on it (no run
ids, experiment ids, hosts, ports, times or commits): it is a DVC output like any other,
byte-identical when reproduced against any store. Its MLflow links name a dataset's experiment
and a saved view, or a model's weights by their md5; the page resolves them when viewed, from
`ui.LINKS_FILE` beside it."""
from __future__ import annotations

import functools
import html
from pathlib import Path

from mnistflow.core.config import Config
from mnistflow.tracking.ui import HEADLINE, LINKS_FILE


@functools.cache
def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["e"] = html.escape  # one escaping for text and attributes, the standard library's
    return env.get_template("index.html.j2")


def mlflow_link(text: str, **data: str) -> str:
    """A link resolved when the page is viewed: to a saved view of an experiment
    (`experiment=`, `view=`), or to the run that trained some weights (`weights=` their md5)."""
    e = html.escape
    attributes = " ".join(f'data-{k}="{e(v)}"' for k, v in data.items())
    return f'<a class="mlflow" {attributes} href="#mlflow">{e(text)}</a>'


def facts_rows(cfg: Config, name: str, evals: dict, facts: dict) -> list[tuple[str, str]]:
    """A model's settings and results, as the rows of its table (values are HTML)."""
    e = html.escape
    mc = cfg.model(name)
    test = evals["test"]
    return [
        ("parameters", f"{facts['params']:,}"),
        ("optimizer", f"{mc.optimizer}, lr {mc.lr:g}, momentum {mc.momentum:g}, weight decay {mc.weight_decay:g}"),
        ("schedule", ", ".join([mc.scheduler.name, *(f"{k} {v}" for k, v in mc.scheduler.settings.items())])),
        ("epochs, batch, shift", f"{mc.epochs}, {mc.batch_size}, {mc.shift}"),
        ("val acc", f"{facts['val_acc']:.4f}"),
        ("test acc", f"{test['acc']:.4f}"),
        ("test ECE, top-2 acc, macro AUROC", f"{test['ece']:.4f}, {test['top2_acc']:.4f}, {test['macro_auroc']:.4f}"),
        ("weights (md5)", f"<code>{facts['model_md5']}</code>"),
        ("MLflow run", mlflow_link("the run that trained these weights", weights=facts["model_md5"])),
    ]


def index_html(cfg: Config, classes: list[str], evals: dict, per_class: dict, facts: dict, per_model: dict,
               comparison: dict | None, study: dict | None, fig_dir) -> str:
    e = html.escape
    models = list(cfg.train.models)

    def img(name: str, wide: bool = False) -> str:
        return f'<img src="{e(str(fig_dir))}/{e(name)}" alt="{e(name)}"' + (' class="wide">' if wide else ">")

    return _template().render(
        dataset=cfg.data.dataset, links_file=LINKS_FILE,
        experiment_link=mlflow_link("the runs table", experiment=cfg.data.dataset, view=HEADLINE), models=models, sets=list(next(iter(evals.values()))),
        evals=evals, classes=classes, per_class=per_class,
        per_class_cell=lambda v: "&ndash;" if v is None else f"{v:.3f}",  # None: no image of that class
        facts_rows={m: facts_rows(cfg, m, evals[m], facts[m]) for m in models}, figures=per_model,
        comparison=comparison, study=study and study_rows(study), img=img)


def study_rows(study: dict, shown: int = 10) -> dict:
    """The study's best trials, best first, for the page's table."""
    done = sorted((t for t in study["trials"] if t["state"] == "COMPLETE"), key=lambda t: (-t["value"], t["trial"]))
    keys = list(study["space"])
    return {**study, "keys": keys, "rows": done[:shown], "complete": len(done)}
