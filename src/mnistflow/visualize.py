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

from mnistflow import plots, tracking
from mnistflow.config import Config
from mnistflow.datasets import DATASETS
from mnistflow.io import load_torch, write_bytes, write_figure
from mnistflow.models import create_model
from mnistflow.splits import load_split, read_stats
from mnistflow.training import Normalizer

log = logging.getLogger(__name__)
SHOWN = 16  # images in the samples and predictions grids


def first_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def weights_figure(model: nn.Module, name: str):
    """What the first layer learned: fc1 rows as 28x28 images (MLP) or the conv1 filters."""
    layer = first_layer(model)
    w = layer.weight.detach().cpu()
    if isinstance(layer, nn.Conv2d):
        images, what = w[:, 0], "conv1 filters"
    else:
        images, what = w[:32].view(-1, 28, 28), "fc1 rows as 28x28 images (first 32)"
    return plots.image_grid(list(images), [str(i) for i in range(len(images))], f"{name}: {what}",
                            columns=min(8, len(images)), cmap="coolwarm", centred=True)


@torch.inference_mode()
def feature_maps_figure(model: nn.Module, image: torch.Tensor, norm: Normalizer, name: str):
    conv = first_layer(model)
    x = norm(image[None].cpu())
    output = conv.cpu()(x)[0, 0]
    pooled = F.max_pool2d(output.relu()[None], 2)[0]
    return plots.feature_maps(image[0], conv.weight[0, 0], output, pooled, f"{name}: conv1, filter 0")


def predictions_figure(rows: list[dict], images, name: str):
    """Test images with the evaluate stage's prediction (rows of its confusion CSV, in test order)."""
    titles = [f"pred: {r['predicted']}\ntrue: {r['actual']}" for r in rows]
    colors = ["black" if r["predicted"] == r["actual"] else "red" for r in rows]
    return plots.image_grid(list(images[:, 0]), titles, f"{name}: predictions (mistakes in red)", colors)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def visualize(cfg: Config, data_dir: Path, models_dir: Path, train_dir: Path, eval_dir: Path,
              figures_dir: Path, index_path: Path) -> None:
    classes = list(DATASETS[cfg.data.dataset].classes)
    norm = Normalizer(**read_stats(data_dir))
    train, test = load_split(data_dir / "train.pt"), load_split(data_dir / "test.pt")
    evals = {m: json.loads((eval_dir / f"{m}.json").read_text()) for m in cfg.models}
    per_class = {m: json.loads((eval_dir / f"{m}.per_class.json").read_text())["test"] for m in cfg.models}
    shared = {
        "samples.png": plots.image_grid(list(train.images[:SHOWN, 0]), [classes[i] for i in train.labels[:SHOWN]],
                                        f"{cfg.data.dataset}: training samples"),
        "loss_curves.png": plots.loss_curves({m: read_csv(train_dir / f"{m}.csv") for m in cfg.models}),
        "robustness.png": plots.robustness({m: {s: r["acc"] for s, r in evals[m].items()} for m in cfg.models}),
    }
    per_model = {}
    for name in cfg.models:
        model = create_model(name)
        model.load_state_dict(load_torch(models_dir / f"{name}.pt"))
        model.eval()
        # The evaluate stage already predicted every test image: reuse, do not re-run the model.
        predicted = read_csv(eval_dir / name / "confusion_test.csv")
        figs = {
            f"confusion_{name}.png": plots.confusion_matrix(_confusion(predicted, classes), classes,
                                                            f"{name}: test set (row-normalized)"),
            f"weights_{name}.png": weights_figure(model, name),
            f"predictions_{name}.png": predictions_figure(predicted[:SHOWN], test.images[:SHOWN], name),
        }
        if isinstance(first_layer(model), nn.Conv2d):
            figs[f"feature_maps_{name}.png"] = feature_maps_figure(model, test.images[0], norm, name)
        per_model[name] = figs
    for name, fig in [*shared.items(), *(kv for figs in per_model.values() for kv in figs.items())]:
        write_figure(figures_dir / name, fig, cfg.dpi)

    runs = {}
    for name in cfg.models:
        run_id = tracking.run_for_model(cfg.data.dataset, name, tracking.file_md5(models_dir / f"{name}.pt"))
        tracking.log_artifacts(run_id, [figures_dir / f for f in [*shared, *per_model[name]]], "figures")
        runs[name] = run_id
    experiment = tracking.experiment_id(cfg.data.dataset)
    page = index_html(cfg, evals, per_class, runs, experiment, [*shared, *(f for figs in per_model.values() for f in figs)],
                      os.path.relpath(figures_dir, index_path.parent))
    write_bytes(index_path, page.encode())
    log.info("report: %s", index_path)


def _confusion(rows: list[dict], classes: list[str]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for row in rows:
        counts[index[row["actual"]]][index[row["predicted"]]] += 1
    return counts


def index_html(cfg: Config, evals: dict, per_class: dict, runs: dict, experiment: str, figures: list[str], fig_dir) -> str:
    """One static page: no scripts, fonts or styles from the network."""
    e = html.escape
    sets = list(next(iter(evals.values())))
    classes = list(DATASETS[cfg.data.dataset].classes)
    acc_rows = "".join(
        f"<tr><th>{e(m)}</th>" + "".join(f"<td>{evals[m][s]['acc']:.4f}</td>" for s in sets)
        + f"<td>{evals[m]['test']['macro_f1']:.4f}</td>"
        + f"<td><a href=\"{tracking.UI_URL}/#/experiments/{experiment}/runs/{runs[m]}\">{runs[m][:8]}</a></td></tr>"
        for m in cfg.models)
    pc = lambda v: "&ndash;" if v is None else f"{v:.3f}"  # noqa: E731  (None: no samples of that class)
    class_rows = "".join(
        f"<tr><th>{e(c)}</th>" + "".join(f"<td>{pc(per_class[m][c])}</td>" for m in cfg.models)
        + "</tr>" for c in classes)
    imgs = "".join(f'<figure><img src="{e(str(fig_dir))}/{e(f)}" alt="{e(f)}"><figcaption>{e(f)}</figcaption></figure>'
                   for f in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistflow report: {e(cfg.data.dataset)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }}
img {{ max-width: 900px; border: 1px solid #eee; }}
</style></head><body>
<h1>mnistflow report: {e(cfg.data.dataset)}</h1>
<h2>Accuracy per model and test set</h2>
<table id="accuracy"><tr><th>model</th>{"".join(f"<th>{e(s)}</th>" for s in sets)}<th>test macro F1</th>
<th>MLflow run</th></tr>{acc_rows}</table>
<p>Run links open the MLflow UI started by <code>make ui</code> ({tracking.UI_URL}).</p>
<h2>Per-class accuracy on the test set</h2>
<table id="per-class"><tr><th>class</th>{"".join(f"<th>{e(m)}</th>" for m in cfg.models)}</tr>{class_rows}</table>
<h2>Figures</h2>
{imgs}
</body></html>
"""
