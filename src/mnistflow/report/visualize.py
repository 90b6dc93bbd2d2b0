"""The visualize stage: the tutorials' figures for every model, and one static report page. It
draws every figure of the pipeline (a figure's look is a dependency of this stage alone), from
the other stages' outputs: the weights files (no model code: the first layer is read from the
state dict), histories, evaluations. Each model's figures are attached to the MLflow run that
trained its weights; the page's MLflow links are resolved beside it (ui.LINKS_FILE)."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mnistflow.report import plots
from mnistflow.report.page import index_html
from mnistflow import tracking
from mnistflow.tracking import ui
from mnistflow.core.config import Config
from mnistflow.core.device import configure
from mnistflow.core.errors import DataError
from mnistflow.core.io import load_torch, write_bytes, write_csv, write_figure
from mnistflow.data.splits import load_split, read_classes, read_stats
from mnistflow.models.inference import Normalizer

log = logging.getLogger(__name__)
SHOWN = 16  # images in the samples and predictions grids


def first_layer(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of the first linear or conv layer, read from the weights file's state
    dict (registration order: the first layer first): 2-d weights are linear, 4-d conv."""
    key = next(k for k, v in state.items() if k.endswith("weight") and v.is_floating_point() and v.dim() in (2, 4))
    return state[key], state.get(key.removesuffix("weight") + "bias")


def parameter_count(state: dict[str, torch.Tensor]) -> int:
    """The trainable numbers: the floating-point tensors (integer buffers, such as DynamicNet's
    seed and pass count, are not parameters; no model here has floating-point buffers)."""
    return sum(v.numel() for v in state.values() if v.is_floating_point())


def weights_figure(w: torch.Tensor, name: str, shape: tuple[int, int, int]):
    """What the first layer (its weight `w`) learned: the conv1 filters, or fc1 rows as images
    (MLP); in colour where the images have three channels."""
    if w.dim() == 4:
        images, what = w, "conv1 filters"
    else:
        images, what = w[:32].view(-1, *shape), f"fc1 rows as {shape[1]}x{shape[2]} images (first 32)"
    return plots.image_grid(list(images), [str(i) for i in range(len(images))], f"{name}: {what}",
                            columns=min(8, len(images)), cmap="coolwarm", centred=True, cell=0.85)


@torch.inference_mode()
def feature_maps_figure(w: torch.Tensor, b: torch.Tensor | None, image: torch.Tensor, norm: Normalizer, name: str):
    # channels-last weights: computed as the evaluate stage computes the layer
    output = F.conv2d(norm(image[None].cpu()), w.contiguous(memory_format=torch.channels_last), b)[0, 0]
    pooled = F.max_pool2d(output.relu()[None], 2)[0]
    return plots.feature_maps(image, w[0], output, pooled, f"{name}: conv1, filter 0")


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


def read_comparison(path: Path, dataset: str, key: str = "optimizers", made_by: str = "make compare-optimizers") -> dict | None:
    """The optimizer comparison (`make compare-optimizers`), or with key "trials" the study
    (`mnistflow tune`), when there is one of this dataset."""
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); run `{made_by}` again") from None
    return result if result.get("dataset") == dataset and result.get(key) else None


def visualize(cfg: Config, data_dir: Path, models_dir: Path, train_dir: Path, eval_dir: Path, confusion_dir: Path,
              optimizers: Path, study_path: Path, figures_dir: Path, history_path: Path, index_path: Path) -> None:
    store = tracking.client()  # first: a tracking server that does not answer or refuses us is one line
    configure(cfg.numerics.mode, cfg.numerics.threads)
    classes, shape = read_classes(data_dir), cfg.data.image_shape
    norm = Normalizer(**read_stats(data_dir))
    train, test = (load_split(data_dir / f"{s}.pt", shape, len(classes)) for s in ("train", "test"))
    evals = {m: json.loads((eval_dir / f"{m}.all.json").read_text()) for m in cfg.train.models}
    histories = {m: read_csv(train_dir / f"{m}.csv") for m in cfg.train.models}
    # DVC's plots: every model's per-epoch history in one file, so they follow train.models.
    write_csv(history_path, [{"model": m, **row} for m, rows in histories.items() for row in rows])
    per_class = {m: json.loads((eval_dir / f"{m}.per_class.json").read_text())["test"] for m in cfg.train.models}
    shared = {
        "robustness.png": plots.robustness({m: {s: r["acc"] for s, r in evals[m].items()} for m in cfg.train.models}),
        "loss_curves.png": plots.loss_curves(histories),
        "samples.png": plots.image_grid(list(train.images[:SHOWN]), [classes[i] for i in train.labels[:SHOWN]],
                                        f"{cfg.data.dataset}: training samples"),
    }
    comparison = read_comparison(optimizers, cfg.data.dataset)
    if comparison:
        shared["optimizers.png"] = plots.optimizer_curves(comparison)
    study = read_comparison(study_path, cfg.data.dataset, "trials", "mnistflow tune")
    if study:
        shared["study.png"] = plots.study_history(study)
    per_model, facts = {}, {}
    for name in cfg.train.models:
        state = load_torch(models_dir / f"{name}.pt")
        w, b = first_layer(state)
        # The evaluate stage already predicted every test image: reuse, do not re-run the model.
        predicted = read_csv(confusion_dir / name / "confusion_test.csv")
        figs = {
            f"loss_curve_{name}.png": plots.loss_curve(histories[name], f"{name} on {cfg.data.dataset}"),
            f"confusion_{name}.png": plots.confusion_matrix(_confusion(predicted, classes), classes,
                                                            f"{name}: test set (row-normalized)"),
            f"reliability_{name}.png": plots.reliability_diagram(
                read_reliability(eval_dir / f"{name}.reliability.csv"), {s: r["ece"] for s, r in evals[name].items()},
                f"{name}: reliability"),
            f"mistakes_{name}.png": mistakes_figure(predicted, test.images, name),
            f"weights_{name}.png": weights_figure(w, name, shape),
        }
        if w.dim() == 4:  # a conv net
            figs[f"feature_maps_{name}.png"] = feature_maps_figure(w, b, test.images[0], norm, name)
        per_model[name] = figs
        facts[name] = {
            "params": parameter_count(state),
            "val_acc": json.loads((train_dir / f"{name}.json").read_text())["val_acc"],
            "model_md5": tracking.file_md5(models_dir / f"{name}.pt"),
        }
    files = [*shared, *(f for figs in per_model.values() for f in figs)]
    for name, fig in [*shared.items(), *(kv for figs in per_model.values() for kv in figs.items())]:
        write_figure(figures_dir / name, fig, cfg.visualize.dpi)
    # Only what the inputs fix goes on the page (no run ids, ports, times or commits): it is a DVC
    # output like any other, byte-identical when reproduced. Its MLflow links are resolved when
    # it is viewed, from ui.LINKS_FILE beside it (written below and by `make ui`).
    page = index_html(cfg, classes, evals, per_class, facts, per_model, comparison, study,
                      os.path.relpath(figures_dir, index_path.parent))
    write_bytes(index_path, page.encode())
    for name, figs in per_model.items():  # each model's figures, in the run that trained it
        tracking.attach_figures(cfg.data.dataset, name, facts[name]["model_md5"],
                                {f.replace(f"_{name}.png", ".png"): figures_dir / f for f in figs})
    run_id = tracking.log_report(cfg.data.dataset, [*(figures_dir / f for f in files), index_path],
                                 {**tracking.made_from(), "models": ",".join(cfg.train.models)})
    for exp in (cfg.data.dataset, tracking.reports_experiment(cfg.data.dataset)):
        ui.install(store, exp)
    ui.write_links(store, index_path.parent)
    log.info("report: %s (MLflow run %s)", index_path, run_id)


def _confusion(rows: list[dict], classes: list[str]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for row in rows:
        counts[index[row["actual"]]][index[row["predicted"]]] += 1
    return counts
