"""The evaluate stage: one torchmetrics collection per test set (the clean one and every variant),
updated batch by batch as the model predicts, computed once. torchmetrics (about 2 s to import:
it loads torchvision and scipy) is imported here alone, so the evaluate stage alone pays for it."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassAUROC, MulticlassCalibrationError,
                                         MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision,
                                         MulticlassRecall)

from mnistflow import tracking
from mnistflow.core.config import Config
from mnistflow.core.device import configure, fast_layout, select_device, set_determinism
from mnistflow.core.errors import DataError
from mnistflow.models.inference import Normalizer, logits_in_batches
from mnistflow.core.io import load_torch, write_csv, write_json
from mnistflow.models import create_model
from mnistflow.data.splits import Split, load_split, read_classes, read_stats

log = logging.getLogger(__name__)
BINS = 15  # of the calibration error and the reliability diagram
# The scalar metrics of a set, in the order reports/eval/<model>.all.json lists them (after the loss).
SCALARS = ("acc", "macro_acc", "macro_f1", "macro_precision", "macro_recall", "top2_acc", "ece", "macro_auroc")


def metric_collection(num_classes: int) -> MetricCollection:
    """Every metric of one test set. Macro means leave out a class that is neither present nor
    predicted (torchmetrics' rule; its macro AUROC counts a class without samples as 0);
    `macro_acc` is the mean per-class accuracy, so it equals `macro_recall`. `per_class_acc` and
    `confusion` (rows actual, columns predicted) are tensors."""
    n = num_classes
    return MetricCollection({
        "acc": MulticlassAccuracy(n, average="micro"),
        "macro_acc": MulticlassAccuracy(n, average="macro"),
        "macro_f1": MulticlassF1Score(n, average="macro"),
        "macro_precision": MulticlassPrecision(n, average="macro"),
        "macro_recall": MulticlassRecall(n, average="macro"),
        "top2_acc": MulticlassAccuracy(n, top_k=2, average="micro"),
        "ece": MulticlassCalibrationError(n, n_bins=BINS),
        "macro_auroc": MulticlassAUROC(n, average="macro"),
        "per_class_acc": MulticlassAccuracy(n, average="none"),
        "confusion": MulticlassConfusionMatrix(n),
    })


def evaluate_split(model: torch.nn.Module, split: Split, norm: Normalizer, classes: list[str]) -> tuple[dict, torch.Tensor, list]:
    """(metrics, predicted classes, reliability bins) of the model on one split: the loss, every
    metric of `metric_collection` (per-class accuracy None for a class without samples:
    undefined, not 0), the confusion matrix as lists."""
    metrics = metric_collection(len(classes)).to(split.images.device)
    loss_sum, preds, confidences = 0.0, [], []
    for logits, labels in logits_in_batches(model, split, norm):
        probabilities = logits.softmax(1)
        metrics.update(probabilities, labels)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        preds.append(logits.argmax(1))
        confidences.append(probabilities.max(1).values)
    preds = torch.cat(preds)
    values = {k: v.cpu() for k, v in metrics.compute().items()}
    support = values["confusion"].sum(1)
    result = {"loss": _r(loss_sum / len(split)), **{k: _r(values[k]) for k in SCALARS},
              "per_class_acc": {c: (_r(a) if s > 0 else None) for c, a, s in zip(classes, values["per_class_acc"], support)},
              "confusion": values["confusion"].tolist()}
    return result, preds, reliability(torch.cat(confidences), preds == split.labels)


def reliability(confidence: torch.Tensor, correct: torch.Tensor) -> list[dict]:
    """The reliability diagram's bins: per bin of the top class's probability, how many images,
    their mean confidence and their accuracy. Binned as the calibration error bins them:
    `BINS` equal bins of [0, 1), and one more for a confidence of exactly 1."""
    edges = torch.linspace(0, 1, BINS + 1, device=confidence.device)
    index = torch.bucketize(confidence, edges, right=True) - 1
    rows = []
    for i in range(BINS + 1):
        members = index == i
        if members.any():
            rows.append({"low": _r(edges[i]), "high": _r(edges[min(i + 1, BINS)]), "count": int(members.sum()),
                         "confidence": _r(confidence[members].mean()), "accuracy": _r(correct[members].float().mean())})
    return rows


def _r(x) -> float:
    return round(float(x), 6)


def evaluate_model(cfg: Config, name: str, weights: Path, data_dir: Path, metrics_path: Path, detail_path: Path,
                   per_class_path: Path, reliability_path: Path, confusion_dir: Path) -> dict:
    """The evaluate stage for one model, per set: accuracy to `metrics_path` (DVC's metrics: a
    models x sets table), every metric to `detail_path`, per-class accuracy to `per_class_path`,
    the reliability bins to `reliability_path`, a confusion CSV into `confusion_dir`; the same
    numbers into its MLflow run, linked to its logged model."""
    tracking.client()  # first: a tracking server that does not answer or refuses us is one line, before any work
    device = select_device(cfg.device)
    configure(cfg.numerics.mode, cfg.numerics.threads)
    set_determinism(cfg.seed, cfg.train.deterministic, device)
    shape, classes = cfg.data.image_shape, read_classes(data_dir)
    model = create_model(name, shape, len(classes))
    try:
        model.load_state_dict(load_torch(weights))
    except FileNotFoundError:
        raise DataError(f"{weights}: not found; run the train stage for {name} first") from None
    fast_layout(model).to(device)
    norm = Normalizer(**read_stats(data_dir))
    sets = {"test": data_dir / "test.pt", **{v: data_dir / "variants" / f"{v}.pt" for v in cfg.preprocess.variants}}
    report, datasets, bins = {}, {}, []
    for set_name, path in sets.items():
        split = load_split(path, shape, len(classes)).to(device)
        datasets[set_name] = tracking.dataset(f"{cfg.data.dataset}-{set_name}", path, split.images, split.labels)
        start = time.perf_counter()
        metrics, preds, set_bins = evaluate_split(model, split, norm, classes)
        seconds = time.perf_counter() - start
        del metrics["confusion"]  # the CSV below holds every prediction; visualize draws it
        report[set_name] = metrics
        bins += [{"set": set_name, **row} for row in set_bins]
        # The class indices beside the names: `dvc plots show` orders the classes by them.
        write_csv(Path(confusion_dir) / f"confusion_{set_name}.csv",
                  [{"actual": classes[a], "predicted": classes[p], "actual_index": a, "predicted_index": p}
                   for a, p in zip(split.labels.tolist(), preds.tolist())])
        log.info("%s on %s: acc %.4f macro_f1 %.4f ece %.4f loss %.4f (%.2fs)", name, set_name,
                 metrics["acc"], metrics["macro_f1"], metrics["ece"], metrics["loss"], seconds)
    # Per-class accuracy beside the metrics, not in them: dvc metrics show stays a models x sets table.
    per_class = {s: m.pop("per_class_acc") for s, m in report.items()}
    write_json(per_class_path, per_class)
    write_json(detail_path, report)
    write_csv(reliability_path, bins)
    write_json(metrics_path, {s: m["acc"] for s, m in report.items()})
    tracking.log_evaluation(cfg.data.dataset, name, tracking.file_md5(weights), report, datasets, per_class)
    return report
