import pytest
import torch

from mnistflow.evaluation import classification_metrics
from mnistflow.splits import Split
from mnistflow.inference import Normalizer, predict

CLASSES = ["a", "b", "c", "d"]  # "d" has no samples and is never predicted


def test_metrics_match_hand_computed_values_with_an_empty_class():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    m = classification_metrics(preds, labels, CLASSES)
    assert m["acc"] == pytest.approx(3 / 5)
    # per class: a 1/2, b 2/2, c 0/1; d has no samples -> undefined (None), not 0
    assert m["per_class_acc"] == {"a": 0.5, "b": 1.0, "c": 0.0, "d": None}
    assert m["macro_acc"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-6)
    # F1 per class: a: tp1 fp1 fn1 -> 0.5; b: tp2 fp1 fn0 -> 0.8; c: 0; d left out of the mean
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3, abs=1e-6)
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_predict_returns_classes_and_mean_cross_entropy():
    class Fixed(torch.nn.Module):  # logits favour the class stored in the first pixel
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 10).float() * 10

    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    split = Split(images, torch.tensor([1, 2, 0]))
    preds, loss = predict(Fixed(), split, Normalizer(mean=(0.0,), std=(1 / 255,)))
    assert preds.tolist() == [1, 2, 3]
    expected = torch.nn.functional.cross_entropy(
        torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float() * 10, split.labels)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
