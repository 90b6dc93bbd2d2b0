"""The evaluate stage: metrics from the confusion matrix, on the clean test set and on every variant."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from mnistflow import tracking
from mnistflow.config import Config
from mnistflow.datasets import DATASETS
from mnistflow.device import configure, fast_layout, select_device, set_determinism
from mnistflow.errors import DataError
from mnistflow.io import load_torch, write_csv, write_json
from mnistflow.models import create_model
from mnistflow.plots import confusion_matrix
from mnistflow.splits import load_split, read_stats
from mnistflow.inference import Normalizer, predict

log = logging.getLogger(__name__)


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy (micro), macro accuracy and macro F1, per-class accuracy (None for a class with
    no samples: undefined, not 0) and the confusion matrix (rows actual, columns predicted).
    The macro means leave out a class that is neither present nor predicted, as torchmetrics does."""
    n = len(classes)
    confusion = torch.bincount(labels * n + preds, minlength=n * n).view(n, n).cpu()
    tp = confusion.diag().double()
    support, predicted = confusion.sum(1).double(), confusion.sum(0).double()
    per_class = tp / support.clamp(min=1)
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    seen = (support + predicted) > 0
    return {
        "acc": _r(tp.sum() / len(labels)),
        "macro_acc": _r(per_class[seen].mean()),
        "macro_f1": _r(f1[seen].mean()),
        "per_class_acc": {c: (_r(a) if s > 0 else None) for c, a, s in zip(classes, per_class, support)},
        "confusion": confusion.tolist(),
    }


def _r(x) -> float:
    return round(float(x), 6)


def evaluate_model(cfg: Config, name: str, weights: Path, data_dir: Path,
                   metrics_path: Path, detail_path: Path, per_class_path: Path, confusion_dir: Path) -> dict:
    """The evaluate stage for one model, per set: accuracy to `metrics_path` (DVC's metrics: a
    models x sets table), every metric to `detail_path`, per-class accuracy to `per_class_path`,
    a confusion CSV into `confusion_dir`; the same numbers into its MLflow run."""
    device = select_device(cfg.device)
    configure(cfg.numerics.mode, cfg.numerics.threads)
    set_determinism(cfg.seed, cfg.train.deterministic)
    model = create_model(name, DATASETS[cfg.data.dataset].shape)
    try:
        model.load_state_dict(load_torch(weights))
    except FileNotFoundError:
        raise DataError(f"{weights}: not found; run the train stage for {name} first") from None
    fast_layout(model).to(device)
    norm = Normalizer(**read_stats(data_dir))
    classes = list(DATASETS[cfg.data.dataset].classes)
    sets = {"test": data_dir / "test.pt", **{v: data_dir / "variants" / f"{v}.pt" for v in cfg.preprocess.variants}}
    report, figures, datasets = {}, {}, {}
    for set_name, path in sets.items():
        split = load_split(path, DATASETS[cfg.data.dataset].shape).to(device)
        datasets[set_name] = tracking.dataset(f"{cfg.data.dataset}-{set_name}", path, split.images, split.labels)
        preds, loss = predict(model, split, norm)
        metrics = classification_metrics(preds, split.labels, classes)
        confusion = metrics.pop("confusion")
        report[set_name] = {"loss": _r(loss), **metrics}
        write_csv(Path(confusion_dir) / f"confusion_{set_name}.csv",
                  [{"actual": classes[a], "predicted": classes[p]}
                   for a, p in zip(split.labels.tolist(), preds.tolist())])
        figures[f"confusion_{set_name}.png"] = confusion_matrix(confusion, classes, f"{name}: {set_name}")
        log.info("%s on %s: acc %.4f macro_f1 %.4f loss %.4f", name, set_name,
                 metrics["acc"], metrics["macro_f1"], loss)
    # Per-class accuracy beside the metrics, not in them: dvc metrics show stays a models x sets table.
    per_class = {s: m.pop("per_class_acc") for s, m in report.items()}
    write_json(per_class_path, per_class)
    write_json(detail_path, report)
    write_json(metrics_path, {s: m["acc"] for s, m in report.items()})
    tracking.log_evaluation(cfg.data.dataset, name, tracking.file_md5(weights), report, datasets, figures,
                            per_class)
    return report
