"""The training loop: whole splits in memory, per-batch normalization, seeded shuffles."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mnistflow.train import distributed
from mnistflow.tracking import lineage
from mnistflow.core import numerics
from mnistflow import tracking
from mnistflow.core.config import Config, EarlyStop, ModelConfig
from mnistflow.core.device import autocast, configure, fast_layout, select_device, set_determinism, uses_bf16
from mnistflow.core.errors import MnistflowError
from mnistflow.models.inference import Normalizer, predict
from mnistflow.core.io import load_torch, save_torch, write_csv, write_json
from mnistflow.models import create_model
from mnistflow.train.optim import build_optimizer, build_scheduler, step_scheduler
from mnistflow.data.splits import Split, load_split, read_classes, read_stats
from mnistflow.data.transforms import random_shift

log = logging.getLogger(__name__)


class TrainingDiverged(MnistflowError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_second: float

    def row(self) -> dict:
        """The reproducible part, for reports/train/<model>.csv; timings go to MLflow only."""
        return {k: v for k, v in asdict(self).items() if k not in ("seconds", "images_per_second")}


def evaluate_loss_acc(model: nn.Module, split: Split, norm: Normalizer, amp: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split."""
    preds, loss = predict(model, split, norm, amp)
    return loss, (preds == split.labels).sum().item() / len(split)


def best_epoch(history: list[EpochResult], rule: EarlyStop) -> int:
    """The epoch whose weights early stopping keeps: the first to beat every earlier one's
    val_acc by more than `min_delta`, starting from epoch 1."""
    best = history[0]
    for r in history[1:]:
        if r.val_acc > best.val_acc + rule.min_delta:
            best = r
    return best.epoch


def stops_after(history: list[EpochResult], rule: EarlyStop) -> bool:
    """Early stopping's verdict after these epochs: `patience` epochs without a gain."""
    return rule.patience > 0 and bool(history) and history[-1].epoch - best_epoch(history, rule) >= rule.patience


def fit(model: nn.Module, train: Split, val: Split, cfg: ModelConfig, norm: Normalizer, *,
        seed: int, amp: bool = False, name: str = "model",
        on_epoch: Callable[[EpochResult], None] = lambda r: None,
        resume: dict | None = None, save_state: Callable[[dict], None] = lambda s: None,
        world: distributed.World = distributed.SINGLE) -> list[EpochResult]:
    """Train `model` in place on splits already on the device; return per-epoch results.

    `save_state` gets the full training state after every epoch; `resume` is such a state to
    continue from. With `cfg.early_stop` on, training stops `patience` epochs after the best
    one and the model ends holding the best epoch's weights (kept in the state too, so a
    resumed run stops at the same epoch with the same weights). Every epoch draws from its own generator seeded by (seed, epoch), so a
    resumed run ends with the same weights as an uninterrupted one. In a `world` of N
    processes, each takes the N-th part of every batch that one process would take.
    """
    device = train.images.device
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    show_bar = sys.stderr.isatty()
    history, best = [], None  # best: the best epoch's weights, when early stopping is on
    rule = cfg.early_stop
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        history = [EpochResult(**row) for row in resume["history"]]
        best = resume.get("best_model")
        log.info("%s: resuming after epoch %d of %d from a checkpoint", name, len(history), cfg.epochs)
    net = DistributedDataParallel(model) if world.size > 1 else model  # all-reduces the gradients
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if stops_after(history, rule):
            break
        model.train()
        start = time.perf_counter()
        # A generator per epoch, seeded from (seed, epoch): the order does not depend on what ran before.
        gen = torch.Generator().manual_seed(seed * 10_000 + epoch)
        order = torch.randperm(len(train), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        first_bad = torch.full((), -1, device=device)  # first batch whose loss is not finite
        lr = optimizer.param_groups[0]["lr"]
        batches = range(0, len(train), cfg.batch_size)
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not show_bar, leave=False)
        for i, b in enumerate(bar):
            idx = order[b:b + cfg.batch_size]
            # Every process draws the whole batch's shifts: the generators stay in step.
            x, y = norm(random_shift(train.images[idx], cfg.shift, gen)), train.labels[idx]
            x, y = x.tensor_split(world.size)[world.rank], y.tensor_split(world.size)[world.rank]
            with autocast(device, amp):
                logits = net(x)
            # The sum over this process's part, over the whole batch: DDP's mean over the N
            # processes then gives every process the gradient of the whole batch's mean loss.
            loss_part = F.cross_entropy(logits.float(), y, reduction="sum")
            loss = loss_part * world.size / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Sums and the divergence check stay on the device: no sync per batch.
            loss_sum += loss_part.detach()
            correct += (logits.argmax(1) == y).sum()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i + 1, first_bad)
            if i % 50 == 49 or b + cfg.batch_size >= len(train):
                _check_finite(first_bad, name, epoch, optimizer.param_groups[0]["lr"], world)
            if show_bar and i % 20 == 0:
                seen = b + len(y)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        distributed.all_sum(loss_sum, world)
        distributed.all_sum(correct, world)
        seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate_loss_acc(model, val, norm, amp)
        val_seconds = time.perf_counter() - start - seconds
        step_scheduler(scheduler, val_loss)
        result = EpochResult(
            epoch=epoch,
            train_loss=round(loss_sum.item() / len(train), 6),
            train_acc=round(correct.item() / len(train), 6),
            val_loss=round(val_loss, 6),
            val_acc=round(val_acc, 6),
            lr=lr,
            seconds=round(seconds, 3),
            images_per_second=round(len(train) / seconds, 1),
        )
        history.append(result)
        if rule.patience and best_epoch(history, rule) == epoch:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_state({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "history": [asdict(r) for r in history], "best_model": best})
        on_epoch(result)
        # Last: once this line is out, the epoch is saved and logged (the fault tests wait on it).
        log.info("%s epoch %d/%d: train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f "
                 "lr %.3g %.2fs (%.0f img/s), validation %.2fs", name, epoch, cfg.epochs, result.train_loss,
                 result.train_acc, result.val_loss, result.val_acc, lr, seconds, result.images_per_second, val_seconds)
    if best is not None and best_epoch(history, rule) != history[-1].epoch:
        model.load_state_dict(best)
        log.info("%s: stopped after epoch %d, keeping epoch %d's weights (val_acc %.4f)", name, history[-1].epoch,
                 best_epoch(history, rule), history[best_epoch(history, rule) - 1].val_acc)
    return history


def _check_finite(first_bad: torch.Tensor, name: str, epoch: int, lr: float, world: distributed.World) -> None:
    if world.size > 1:  # every process stops at the same batch: the first bad one of any
        first_bad = distributed.all_min(torch.where(first_bad > 0, first_bad, torch.iinfo(torch.int64).max), world)
        first_bad = torch.where(first_bad == torch.iinfo(torch.int64).max, -1, first_bad)
    if first_bad.item() > 0:
        raise TrainingDiverged(f"{name}: the loss became NaN or infinite at epoch {epoch}, batch "
                               f"{first_bad.item()}; training stopped. Try a lower train.{name}.lr "
                               f"(now {lr:g}).")


def train_model(cfg: Config, name: str, data_dir: Path, weights_path: Path,
                metrics_path: Path, history_path: Path, checkpoint_dir: Path = Path("checkpoints")) -> list[EpochResult]:
    """The train stage for one model: fit, write its outputs, record it all in MLflow."""
    device = select_device(cfg.device)
    world = distributed.start(device)
    if world.main:  # a tracking server that does not answer or refuses us: one line, before any work
        tracking.client()
    configure(cfg.numerics.mode, cfg.numerics.threads, world.size)
    set_determinism(cfg.seed, cfg.train.deterministic, device)
    data_dir = Path(data_dir)
    dataset, shape, classes = cfg.data.dataset, cfg.data.image_shape, read_classes(data_dir)
    train = load_split(data_dir / "train.pt", shape, len(classes)).to(device)
    val = load_split(data_dir / "val.pt", shape, len(classes)).to(device)
    norm = Normalizer(**read_stats(data_dir))
    model = fast_layout(create_model(name, shape, len(classes))).to(device)
    model_cfg = cfg.model(name)
    amp = uses_bf16(device, cfg.train.amp, cfg.numerics.mode)
    params = {**cfg.run_params(name), **numerics.what_ran(), "world_size": world.size,
              "precision": "bf16" if amp else "fp32"}
    # Across machines, one series of system metrics per machine, named as its runs' node tag.
    node = tracking.node() if distributed.spans_machines() else None
    if not world.main:  # rank 0 alone reads and writes checkpoints, outputs and the MLflow run
        resume = distributed.from_main(None, world)
        try:
            with distributed.peers_or_stop(world):
                run_id = distributed.from_main(None, world)
                with tracking.peer_system_metrics(run_id, node) if distributed.node_leader() else nullcontext():
                    return fit(model, train, val, model_cfg, norm, seed=cfg.seed, amp=amp, name=name,
                               resume=resume, world=world)
        except TrainingDiverged:  # rank 0 stops at the same batch: it reports it and fails the run
            return []
    checkpoint = Checkpoint(Path(checkpoint_dir) / f"{name}.pt", _checkpoint_key(params, data_dir))
    resume = distributed.from_main(checkpoint.load() if cfg.train.resume else None, world)
    with tracking.tracked_run(dataset, tracking.run_label(name), params, tracking.run_tags(dataset, device),
                              run_id=resume and resume["run_id"], machine_use=cfg.train.system_metrics,
                              node=node) as run:
        distributed.from_main(run.run_id if cfg.train.system_metrics else None, world)
        for context, split_name, split in (("training", "train", train), ("validation", "val", val)):
            run.log_inputs([tracking.dataset(f"{dataset}-{split_name}", data_dir / f"{split_name}.pt",
                                             split.images, split.labels)], context)
        if resume:  # the epochs the run lacks: all in a new run; in the same run, those a lost server missed
            logged = run.logged_steps("val_acc")  # an epoch's metrics go in one batch: all or none
            for row in resume["history"]:
                if row["epoch"] not in logged:
                    run.log_epoch(EpochResult(**row))
        with distributed.peers_or_stop(world):
            history = fit(model, train, val, model_cfg, norm, seed=cfg.seed, amp=amp, name=name,
                          on_epoch=run.log_epoch, resume=resume,
                          save_state=lambda state: checkpoint.save({**state, "run_id": run.run_id}), world=world)
        model.to(memory_format=torch.contiguous_format)  # the saved and logged weights: the usual layout
        save_torch(weights_path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        kept = history[best_epoch(history, model_cfg.early_stop) - 1] if model_cfg.early_stop.patience else history[-1]
        stopping = {"best_epoch": kept.epoch, "stopped_epoch": history[-1].epoch} if model_cfg.early_stop.patience else {}
        write_json(metrics_path, {**{k: getattr(kept, k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
                                  **stopping})  # the kept weights' values
        write_csv(history_path, [r.row() for r in history])
        # kept_val_acc: the saved weights' (the best epoch's under early stopping; val_acc is the last epoch's)
        run.log_metrics({"train_seconds": round(sum(r.seconds for r in history), 3), "kept_val_acc": kept.val_acc,
                         **stopping})
        run.log_params_file(Path("params.yaml"))
        # Two real held-out images as the served model's input example (train must not read test).
        run.log_model(model, weights_path, tracking.model_name(dataset, name), mean=norm.mean, std=norm.std,
                      classes=classes, example=val.images[:2])
        lineage.record(run)
    checkpoint.remove()
    return history


def _checkpoint_key(params: dict, data_dir: Path) -> str:
    """What a checkpoint must match to be resumed: the run's params and its training data."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for name in ("train.pt", "val.pt", "stats.json"):
        digest.update(hashlib.md5((Path(data_dir) / name).read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """The training state after the last finished epoch, kept outside DVC's outputs (DVC
    deletes those before a stage runs) so that a rerun after a kill can resume."""

    path: Path
    key: str

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = load_torch(self.path)
        except Exception as exc:  # a checkpoint cut short by a kill: start over
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if state.get("key") != self.key:
            log.warning("ignoring checkpoint %s: it was made with other params or data", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        save_torch(self.path, {**state, "key": self.key})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
