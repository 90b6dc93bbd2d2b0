"""The visualize stage: the tutorials' figures for every model, and one static report page."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnistflow.report import plots
from mnistflow.report.page import index_html
from mnistflow import tracking
from mnistflow.tracking import ui
from mnistflow.core.config import Config
from mnistflow.core.device import configure, fast_layout
from mnistflow.core.errors import DataError
from mnistflow.core.io import load_torch, write_bytes, write_figure
from mnistflow.models import create_model
from mnistflow.data.splits import load_split, read_classes, read_stats
from mnistflow.models.inference import Normalizer

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
    classes, shape = read_classes(data_dir), cfg.data.image_shape
    norm = Normalizer(**read_stats(data_dir))
    train, test = (load_split(data_dir / f"{s}.pt", shape, len(classes)) for s in ("train", "test"))
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
        model = create_model(name, shape, len(classes))
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
    page = index_html(cfg, classes, evals, per_class, facts, per_model, comparison, experiment_url,
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
