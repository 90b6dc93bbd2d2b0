"""Optimizer and learning-rate scheduler factories, driven by a model's config."""
from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from mnistflow.core.config import ModelConfig

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adadelta": torch.optim.Adadelta,
              "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}
WITH_MOMENTUM = {"sgd", "rmsprop"}
# One fused kernel per step instead of several per tensor (Adam's default path on the CPU takes
# longer than an mlp's forward and backward together).
FUSED = {"sgd", "adam"}
# The config's scheduler settings are these classes' own keyword arguments.
SCHEDULERS = {"step": lr_scheduler.StepLR, "multistep": lr_scheduler.MultiStepLR,
              "exponential": lr_scheduler.ExponentialLR, "cosine": lr_scheduler.CosineAnnealingLR,
              "plateau": lr_scheduler.ReduceLROnPlateau}


def build_optimizer(params, cfg: ModelConfig) -> torch.optim.Optimizer:
    params = list(params)
    extra = {"momentum": cfg.momentum} if cfg.optimizer in WITH_MOMENTUM else {}
    if cfg.optimizer in FUSED and params and params[0].device.type in ("cpu", "cuda"):
        extra["fused"] = True
    return OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ModelConfig):
    """A per-epoch scheduler, or None; `step_scheduler` advances it."""
    name = cfg.scheduler.name
    if name == "none":
        return None
    fixed = {"cosine": {"T_max": cfg.epochs}, "plateau": {"mode": "min"}}.get(name, {})
    return SCHEDULERS[name](optimizer, **cfg.scheduler.settings, **fixed)


def step_scheduler(scheduler, val_loss: float) -> None:
    """Advance one epoch; plateau watches the validation loss."""
    if scheduler is None:
        return
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()
