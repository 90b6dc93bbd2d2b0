"""A trained model applied to a split: what training's validation, evaluation and the figures share."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnistflow.device import autocast
from mnistflow.splits import Split

EVAL_BATCH = 1000


@dataclass(frozen=True)
class Normalizer:
    """uint8 pixels -> standardized float, applied per batch on the device."""

    mean: float
    std: float

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std


@torch.inference_mode()
def predict(model: nn.Module, split: Split, norm: Normalizer, amp: bool = False) -> tuple[torch.Tensor, float]:
    """Predicted classes of a split (on its device) and the mean cross-entropy, in batches."""
    model.eval()
    device = split.images.device
    preds, loss_sum = [], 0.0
    for start in range(0, len(split), EVAL_BATCH):
        with autocast(device, amp):
            logits = model(norm(split.images[start:start + EVAL_BATCH]))
        loss_sum += F.cross_entropy(logits.float(), split.labels[start:start + EVAL_BATCH], reduction="sum").item()
        preds.append(logits.argmax(1))
    return torch.cat(preds), loss_sum / len(split)
