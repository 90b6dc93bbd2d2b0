"""The visualize stage: the tutorials' figures for every model, and one static report page."""
from __future__ import annotations

import csv
import html
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnistflow import plots, tracking, ui
from mnistflow.config import Config
from mnistflow.datasets import DATASETS
from mnistflow.device import configure, fast_layout
from mnistflow.errors import DataError
from mnistflow.io import load_torch, write_bytes, write_figure
from mnistflow.models import create_model
from mnistflow.splits import load_split, read_stats
from mnistflow.inference import Normalizer

log = logging.getLogger(__name__)
SHOWN = 16  # images in the samples and predictions grids


def first_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def weights_figure(model: nn.Module, name: str, shape: tuple[int, int, int]):
    """What the first layer learned: the conv1 filters, or fc1 rows as images (MLP); in colour
    where the images have three channels."""
    layer = first_layer(model)
    w = layer.weight.detach().cpu()
    if isinstance(layer, nn.Conv2d):
        images, what = w, "conv1 filters"
    else:
        images, what = w[:32].view(-1, *shape), f"fc1 rows as {shape[1]}x{shape[2]} images (first 32)"
    return plots.image_grid(list(images), [str(i) for i in range(len(images))], f"{name}: {what}",
                            columns=min(8, len(images)), cmap="coolwarm", centred=True, cell=0.85)


@torch.inference_mode()
def feature_maps_figure(model: nn.Module, image: torch.Tensor, norm: Normalizer, name: str):
    conv = first_layer(model)
    x = norm(image[None].cpu())
    output = conv.cpu()(x)[0, 0]
    pooled = F.max_pool2d(output.relu()[None], 2)[0]
    return plots.feature_maps(image, conv.weight[0], output, pooled, f"{name}: conv1, filter 0")


def mistakes_figure(rows: list[dict], images, name: str):
    """The first SHOWN misclassified test images, with the evaluate stage's prediction (rows of
    its confusion CSV, in test order) and the true class."""
    wrong = [i for i, r in enumerate(rows) if r["predicted"] != r["actual"]][:SHOWN]
    if not wrong:
        return plots.message(f"{name}: no misclassified test images")
    titles = [f"pred: {rows[i]['predicted']}\ntrue: {rows[i]['actual']}" for i in wrong]
    return plots.image_grid(list(images[wrong]), titles, f"{name}: misclassified test images",
                            ["red"] * len(wrong))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_reliability(path: Path) -> dict[str, list[dict]]:
    """The evaluate stage's reliability bins, per set, in its order (the clean test set first)."""
    bins: dict[str, list[dict]] = {}
    for row in read_csv(path):
        bins.setdefault(row.pop("set"), []).append({k: float(v) for k, v in row.items()})
    return bins


def read_comparison(path: Path, dataset: str) -> dict | None:
    """The optimizer comparison (`make compare-optimizers`), when there is one of this dataset."""
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); run `make compare-optimizers` again") from None
    return result if result.get("dataset") == dataset and result.get("optimizers") else None


def visualize(cfg: Config, data_dir: Path, models_dir: Path, train_dir: Path, eval_dir: Path, optimizers: Path,
              figures_dir: Path, index_path: Path) -> None:
    configure(cfg.numerics.mode, cfg.numerics.threads)
    classes, shape = list(DATASETS[cfg.data.dataset].classes), DATASETS[cfg.data.dataset].shape
    norm = Normalizer(**read_stats(data_dir))
    train, test = load_split(data_dir / "train.pt", shape), load_split(data_dir / "test.pt", shape)
    evals = {m: json.loads((eval_dir / f"{m}.all.json").read_text()) for m in cfg.train.models}
    per_class = {m: json.loads((eval_dir / f"{m}.per_class.json").read_text())["test"] for m in cfg.train.models}
    shared = {
        "robustness.png": plots.robustness({m: {s: r["acc"] for s, r in evals[m].items()} for m in cfg.train.models}),
        "loss_curves.png": plots.loss_curves({m: read_csv(train_dir / f"{m}.csv") for m in cfg.train.models}),
        "samples.png": plots.image_grid(list(train.images[:SHOWN]), [classes[i] for i in train.labels[:SHOWN]],
                                        f"{cfg.data.dataset}: training samples"),
    }
    comparison = read_comparison(optimizers, cfg.data.dataset)
    if comparison:
        shared["optimizers.png"] = plots.optimizer_curves(comparison)
    per_model, facts = {}, {}
    for name in cfg.train.models:
        model = create_model(name, shape)
        model.load_state_dict(load_torch(models_dir / f"{name}.pt"))
        fast_layout(model).eval()  # the feature maps computed as in evaluation
        # The evaluate stage already predicted every test image: reuse, do not re-run the model.
        predicted = read_csv(eval_dir / name / "confusion_test.csv")
        figs = {
            f"confusion_{name}.png": plots.confusion_matrix(_confusion(predicted, classes), classes,
                                                            f"{name}: test set (row-normalized)"),
            f"reliability_{name}.png": plots.reliability_diagram(
                read_reliability(eval_dir / f"{name}.reliability.csv"), {s: r["ece"] for s, r in evals[name].items()},
                f"{name}: reliability"),
            f"mistakes_{name}.png": mistakes_figure(predicted, test.images, name),
            f"weights_{name}.png": weights_figure(model, name, shape),
        }
        if isinstance(first_layer(model), nn.Conv2d):
            figs[f"feature_maps_{name}.png"] = feature_maps_figure(model, test.images[0], norm, name)
        per_model[name] = figs
        facts[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "val_acc": json.loads((train_dir / f"{name}.json").read_text())["val_acc"],
            "model_md5": tracking.file_md5(models_dir / f"{name}.pt"),
        }
    files = [*shared, *(f for figs in per_model.values() for f in figs)]
    for name, fig in [*shared.items(), *(kv for figs in per_model.values() for kv in figs.items())]:
        write_figure(figures_dir / name, fig, cfg.visualize.dpi)
    # Only what the inputs fix goes on the page (no run ids, times or commits): it is a DVC
    # output like any other, byte-identical when reproduced. Runs are found by the weights' md5.
    experiment_url = ui.runs_url(tracking.experiment_id(cfg.data.dataset))
    for fact in facts.values():
        fact["url"] = tracking.weights_url(cfg.data.dataset, fact["model_md5"])
    page = index_html(cfg, evals, per_class, facts, per_model, comparison, experiment_url,
                      os.path.relpath(figures_dir, index_path.parent))
    write_bytes(index_path, page.encode())
    run_id = tracking.log_report(cfg.data.dataset, [*(figures_dir / f for f in files), index_path],
                                 {**tracking.git_state(), "models": ",".join(cfg.train.models)})
    log.info("report: %s (MLflow run %s)", index_path, run_id)


def _confusion(rows: list[dict], classes: list[str]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for row in rows:
        counts[index[row["actual"]]][index[row["predicted"]]] += 1
    return counts


def index_html(cfg: Config, evals: dict, per_class: dict, facts: dict, per_model: dict, comparison: dict | None,
               experiment_url: str, fig_dir) -> str:
    """One static page: no scripts, fonts or styles from the network. The models x sets table
    and the robustness figure first, then one section per model, then what spans them."""
    e = html.escape
    sets = list(next(iter(evals.values())))
    classes = list(DATASETS[cfg.data.dataset].classes)
    img = lambda f, wide=False: (f'<img src="{e(str(fig_dir))}/{e(f)}" alt="{e(f)}"'  # noqa: E731
                                 + (' class="wide">' if wide else ">"))
    acc_rows = "".join(
        f"<tr><th>{e(m)}</th>" + "".join(f"<td>{evals[m][s]['acc']:.4f}</td>" for s in sets)
        + f"<td>{evals[m]['test']['macro_f1']:.4f}</td></tr>" for m in cfg.train.models)
    ece_rows = "".join(f"<tr><th>{e(m)}</th>" + "".join(f"<td>{evals[m][s]['ece']:.4f}</td>" for s in sets)
                       + "</tr>" for m in cfg.train.models)
    sections = "".join(_model_section(cfg, m, evals[m], facts[m], [img(f) for f in per_model[m]])
                       for m in cfg.train.models)
    pc = lambda v: "&ndash;" if v is None else f"{v:.3f}"  # noqa: E731  (None: no samples of that class)
    optimizers = _optimizers_section(comparison, img("optimizers.png", wide=True)) if comparison else ""
    class_rows = "".join(
        f"<tr><th>{e(c)}</th>" + "".join(f"<td>{pc(per_class[m][c])}</td>" for m in cfg.train.models)
        + "</tr>" for c in classes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistflow report: {e(cfg.data.dataset)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1500px; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
.top, .figs {{ display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }}
.figs img {{ max-width: 720px; }}  /* a figure is at most 7.2 inches wide at 100 dpi: shown at its size */
.top img {{ max-width: 800px; }}
.figs img.wide {{ max-width: 100%; }}
section {{ border-top: 2px solid #ddd; margin-top: 1.5em; }}
img {{ border: 1px solid #eee; }}
</style></head><body>
<h1>mnistflow report: {e(cfg.data.dataset)}</h1>
<p>Compare every run in the MLflow UI (<code>make ui</code>): <a href="{e(experiment_url)}">{e(experiment_url)}</a></p>
<div class="top"><div><h2>Accuracy per model and test set</h2>
<table id="accuracy"><tr><th>model</th>{"".join(f"<th>{e(s)}</th>" for s in sets)}<th>test macro F1</th></tr>
{acc_rows}</table>
<h3>Expected calibration error (15 bins; 0: confidence matches accuracy)</h3>
<table id="ece"><tr><th>model</th>{"".join(f"<th>{e(s)}</th>" for s in sets)}</tr>
{ece_rows}</table></div>
<div>{img("robustness.png")}</div></div>
{sections}
<section><h2>All models</h2><div class="figs">{img("loss_curves.png", wide=True)}{img("samples.png")}</div>
<h3>Per-class accuracy on the test set</h3>
<table id="per-class"><tr><th>class</th>{"".join(f"<th>{e(m)}</th>" for m in cfg.train.models)}</tr>{class_rows}</table>
</section>{optimizers}
</body></html>
"""


def _optimizers_section(result: dict, image: str) -> str:
    e = html.escape
    acc = lambda v: "&ndash;" if v is None else f"{v:.4f}"  # noqa: E731
    rows = "".join(f"<tr><th>{e(o)}</th><td>{r['lr']:g}</td><td>{r['val_loss'][-1]:.4f}</td>"
                   f"<td>{r['val_acc'][-1]:.4f}</td><td>{acc(r['test_acc'])}</td><td>{e(r['dvc_exp'])}</td></tr>"
                   for o, r in result["optimizers"].items())
    return (f'\n<section id="optimizers"><h2>Optimizers: {e(result["model"])}, one run each '
            f'(<code>make compare-optimizers</code>)</h2><div class="figs"><table><tr><th>optimizer</th><th>lr</th>'
            f'<th>val loss</th><th>val acc</th><th>test acc</th><th>DVC experiment</th></tr>{rows}</table>'
            f'{image}</div></section>')


def _model_section(cfg: Config, name: str, evals: dict, facts: dict, images: list[str]) -> str:
    e = html.escape
    mc = cfg.model(name)
    sched = ", ".join([mc.scheduler.name, *(f"{k} {v}" for k, v in mc.scheduler.settings.items())])
    rows = {
        "parameters": f"{facts['params']:,}",
        "optimizer": f"{mc.optimizer}, lr {mc.lr:g}, momentum {mc.momentum:g}, weight decay {mc.weight_decay:g}",
        "schedule": sched,
        "epochs, batch, shift": f"{mc.epochs}, {mc.batch_size}, {mc.shift}",
        "val acc": f"{facts['val_acc']:.4f}",
        "test acc": f"{evals['test']['acc']:.4f}",
        "test ECE, top-2 acc, macro AUROC": f"{evals['test']['ece']:.4f}, {evals['test']['top2_acc']:.4f}, "
                                            f"{evals['test']['macro_auroc']:.4f}",
        "weights (md5)": f"<code>{facts['model_md5']}</code>",
        "MLflow run": f'<a href="{e(facts["url"])}">the runs that made these weights</a>',
    }
    table = "".join(f'<tr><th>{k}</th><td style="text-align:left">{v}</td></tr>' for k, v in rows.items())
    return (f'<section id="model-{e(name)}"><h2>{e(name)}</h2><div class="figs"><table class="facts">{table}</table>'
            f'{"".join(images)}</div></section>')
