"""A trained model applied to a split: what training's validation, evaluation and the figures share."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mnistflow.core.device import autocast
from mnistflow.data.splits import Split

EVAL_BATCH = 256  # larger batches fall out of the CPU's cache: slower


@dataclass(frozen=True)
class Normalizer:
    """uint8 pixels -> standardized float, per channel, applied per batch on the device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - _per_channel(self.mean, images.device)) / _per_channel(self.std, images.device)


@functools.cache
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(C,1,1), broadcast over a batch; made once per device, not per batch."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


@torch.inference_mode()
def logits_in_batches(model: nn.Module, split: Split, norm: Normalizer, amp: bool = False
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 logits, labels) of a split (on its device), batch by batch."""
    model.eval()
    for start in range(0, len(split), EVAL_BATCH):
        with autocast(split.images.device, amp):
            logits = model(norm(split.images[start:start + EVAL_BATCH]))
        yield logits.float(), split.labels[start:start + EVAL_BATCH]


def predict(model: nn.Module, split: Split, norm: Normalizer, amp: bool = False) -> tuple[torch.Tensor, float]:
    """Predicted classes of a split (on its device) and the mean cross-entropy."""
    preds, loss_sum = [], 0.0
    for logits, labels in logits_in_batches(model, split, norm, amp):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        preds.append(logits.argmax(1))
    return torch.cat(preds), loss_sum / len(split)
