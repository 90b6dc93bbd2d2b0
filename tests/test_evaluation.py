"""Evaluation's metrics (torchmetrics, one collection per set) against a small independent
computation in numpy, on predictions with a class that is predicted but absent from the labels
and a class that is never predicted."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from mnistflow.models.inference import Normalizer, predict
from mnistflow.data.splits import Split

def evaluation():
    """The module under test, imported when a test runs (torchmetrics takes seconds to import):
    the test process that collects this file but runs none of it does not pay for it."""
    from mnistflow.evaluate import evaluation
    return evaluation


C = 5  # classes 0-2 in the labels; 3 predicted often but never a label; 4 never predicted nor a label


def predictions(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=gen)
    logits = torch.randn(n, C, generator=gen) + 2 * torch.nn.functional.one_hot(labels, C)
    logits[:, 4] -= 100
    logits[labels == 2, 3] += 2.5
    return logits.softmax(1), labels


def by_hand(probs: np.ndarray, labels: np.ndarray) -> dict:
    """The same metrics from their definitions."""
    pred = probs.argmax(1)
    confusion = np.zeros((C, C), int)
    np.add.at(confusion, (labels, pred), 1)
    tp, support, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    fp, fn = predicted - tp, support - tp
    seen = tp + fp + fn > 0  # a class neither present nor predicted is left out of macro means

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros(C), where=b > 0)

    recall, precision = ratio(tp, support), ratio(tp, predicted)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    top2 = (np.argsort(-probs, 1)[:, :2] == labels[:, None]).any(1).mean()
    confidence, correct = probs.max(1), pred == labels
    slot = np.minimum(np.floor(confidence * evaluation().BINS), evaluation().BINS).astype(int)  # one more bin for exactly 1.0
    ece = sum(abs(correct[slot == b].mean() - confidence[slot == b].mean()) * (slot == b).mean()
              for b in np.unique(slot))

    def auroc(c):  # one against the rest, as a rank statistic; torchmetrics scores a class without samples 0
        pos, neg = probs[labels == c, c], probs[labels != c, c]
        if len(pos) == 0:
            return 0.0
        return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))

    return {"acc": correct.mean(), "macro_acc": recall[seen].mean(), "macro_recall": recall[seen].mean(),
            "macro_precision": precision[seen].mean(), "macro_f1": f1[seen].mean(), "top2_acc": top2, "ece": ece,
            "macro_auroc": np.mean([auroc(c) for c in range(C)]), "per_class_acc": recall[:3].tolist(),
            "confusion": confusion.tolist()}


def test_the_collection_equals_an_independent_computation_with_absent_and_unpredicted_classes():
    probs, labels = predictions()
    expected = by_hand(probs.numpy(), labels.numpy())
    assert expected["confusion"][4] == [0] * C and [row[4] for row in expected["confusion"]] == [0] * C
    assert sum(row[3] for row in expected["confusion"]) > 0 and expected["confusion"][3] == [0] * C
    metrics = evaluation().metric_collection(C)
    for start in range(0, len(labels), 64):  # batch by batch, as evaluation feeds it
        metrics.update(probs[start:start + 64], labels[start:start + 64])
    got = metrics.compute()
    for key in ("acc", "macro_acc", "macro_recall", "macro_precision", "macro_f1", "top2_acc", "ece", "macro_auroc"):
        assert got[key].item() == pytest.approx(expected[key], abs=1e-6), key
    assert got["per_class_acc"][:3].tolist() == pytest.approx(expected["per_class_acc"], abs=1e-6)
    assert got["confusion"].tolist() == expected["confusion"]


class Fixed(torch.nn.Module):
    """Logits from the first pixel: it names the class, and the rest of the image's brightness
    how sure the model is."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 4).float() * (1 + x[:, 0, 1, 1:5].sum(1,
                                                                                                               keepdim=True))


def test_a_split_is_evaluated_in_batches_with_undefined_per_class_accuracy_left_none():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 4, (600, 1, 28, 28), dtype=torch.uint8, generator=gen)
    images[:, 0, 0, 0] = torch.randint(0, 3, (600,), dtype=torch.uint8, generator=gen)  # never class 3
    labels = torch.randint(0, 3, (600,), generator=gen)  # nor is any label
    split = Split(images, labels)
    norm = Normalizer(mean=(0.0,), std=(1 / 255,))
    metrics, preds, bins = evaluation().evaluate_split(Fixed(), split, norm, ["a", "b", "c", "d"])  # 600: three batches
    logits = torch.cat([Fixed()(norm(images[i:i + 256])) for i in range(0, 600, 256)]).double().numpy()
    probs = torch.from_numpy(logits).softmax(1)
    expected = by_hand(np.pad(probs.numpy(), ((0, 0), (0, 1))), labels.numpy())
    assert metrics["acc"] == pytest.approx(expected["acc"], abs=1e-6)
    assert metrics["per_class_acc"]["d"] is None  # no samples: undefined, not 0
    assert [metrics["per_class_acc"][c] for c in "abc"] == pytest.approx(expected["per_class_acc"], abs=1e-6)
    assert preds.tolist() == images[:, 0, 0, 0].tolist()
    # Mean cross-entropy in numpy: log-sum-exp of the logits less the true class's logit.
    top = logits.max(1)
    cross_entropy = top + np.log(np.exp(logits - top[:, None]).sum(1)) - logits[np.arange(600), labels.numpy()]
    assert metrics["loss"] == pytest.approx(cross_entropy.mean(), abs=1e-6)
    assert sum(b["count"] for b in bins) == 600
    # the diagram's bins are the calibration error's own
    assert sum(b["count"] / 600 * abs(b["accuracy"] - b["confidence"]) for b in bins) == pytest.approx(metrics["ece"],
                                                                                                      abs=1e-5)


def test_reliability_bins_hold_a_confidence_of_exactly_one_in_a_bin_of_its_own():
    rows = evaluation().reliability(torch.tensor([0.05, 0.06, 0.5, 1.0, 1.0]), torch.tensor([True, False, True, True, False]))
    assert [(r["count"], r["accuracy"]) for r in rows] == [(2, 0.5), (1, 1.0), (2, 0.5)]
    assert rows[0]["low"] == 0.0 and rows[-1]["low"] == rows[-1]["high"] == 1.0


def test_predict_returns_classes_and_mean_cross_entropy():
    class OneHot(torch.nn.Module):  # logits favour the class stored in the first pixel
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 10).float() * 10

    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    split = Split(images, torch.tensor([1, 2, 0]))
    preds, loss = predict(OneHot(), split, Normalizer(mean=(0.0,), std=(1 / 255,)))
    assert preds.tolist() == [1, 2, 3]
    expected = torch.nn.functional.cross_entropy(
        torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float() * 10, split.labels)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
