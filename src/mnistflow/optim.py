"""Optimizer and learning-rate scheduler factories, driven by a model's config."""
from __future__ import annotations

import torch

from mnistflow.config import ModelConfig


def build_optimizer(params, cfg: ModelConfig) -> torch.optim.Optimizer:
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, **common)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **common)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, **common)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, **common)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=cfg.momentum, **common)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # config validation prevents this


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ModelConfig):
    """A per-epoch scheduler, or None; `step_scheduler` advances it."""
    s, lr_sched = cfg.scheduler.settings, torch.optim.lr_scheduler
    name = cfg.scheduler.name
    if name == "none":
        return None
    if name == "step":
        return lr_sched.StepLR(optimizer, step_size=s["step_size"], gamma=s["gamma"])
    if name == "multistep":
        return lr_sched.MultiStepLR(optimizer, milestones=s["milestones"], gamma=s["gamma"])
    if name == "exponential":
        return lr_sched.ExponentialLR(optimizer, gamma=s["gamma"])
    if name == "cosine":
        return lr_sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=s["eta_min"])
    if name == "plateau":
        return lr_sched.ReduceLROnPlateau(optimizer, mode="min", factor=s["factor"], patience=s["patience"])
    raise ValueError(f"unknown scheduler {name!r}")  # config validation prevents this


def step_scheduler(scheduler, val_loss: float) -> None:
    """Advance one epoch; plateau watches the validation loss."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()
