"""Training speed on this machine, in one process: the tutorial's textbook loop against the
project's loop on the same model (the default cnn), data, optimizer and batch size, alternating
repeats of one epoch each (training passes only); then the time to accuracy, the seconds of
training passes until the default cnn first reaches 92.0% validation accuracy.

The project's loop runs as the train stage does (bf16 autocast where the device has bf16 units,
channels-last conv weights); the row "project, fp32 NCHW" is the same loop without both, to show
what they bring. On CUDA two more rows: deterministic kernels off, and torch.compile.

    make bench            # or: PYTHONPATH=src python bench/train_speed.py [--repeats 3] [--no-tta]

Needs the default pipeline's data (`dvc repro preprocess`, which `make bench` runs first).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnistflow.config import load_config  # noqa: E402
from mnistflow.device import autocast, fast_layout, select_device, set_determinism, uses_bf16  # noqa: E402
from mnistflow.inference import Normalizer  # noqa: E402
from mnistflow.models import create_model, model_names  # noqa: E402
from mnistflow.optim import build_optimizer  # noqa: E402
from mnistflow.splits import load_split, read_stats  # noqa: E402
from mnistflow.training import fit  # noqa: E402

MODEL, TARGET = "cnn", 0.92
DATA = Path("data/processed")


def textbook_epoch(cfg, device, stats, amp: bool) -> float:
    """The tutorial's loop: torchvision's dataset, ToTensor and Normalize per image, a DataLoader
    with 2 workers, batch by batch to the device. Images per second of one training pass."""
    mc = cfg.model(MODEL)
    ds = torchvision.datasets.FashionMNIST(f"data/raw/{cfg.data.dataset}", train=True, download=False,
                                           transform=transforms.Compose([transforms.ToTensor(),
                                                                         transforms.Normalize(stats["mean"], stats["std"])]))
    loader = DataLoader(ds, batch_size=mc.batch_size, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model = create_model(MODEL).to(device).train()
    optimizer = build_optimizer(model.parameters(), mc)
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def project_epoch(cfg, device, train, val, norm, amp: bool, fast: bool = True, deterministic: bool = True,
                  compile: bool = False) -> float:
    """The project's `fit` for one epoch: images per second of its training pass."""
    set_determinism(cfg.seed, deterministic)
    model = (fast_layout(create_model(MODEL)) if fast else create_model(MODEL)).to(device)
    if compile:
        model = torch.compile(model)  # its compile time falls in the first repeat
    (result,) = fit(model, train, val, cfg.model(MODEL).model_copy(update={"epochs": 1}), norm, seed=cfg.seed,
                    amp=amp and fast)
    set_determinism(cfg.seed, cfg.train.deterministic)
    return result.images_per_second


class _Reached(Exception):
    pass


def time_to_accuracy(cfg, device, train, val, norm, amp: bool) -> tuple[int, float] | None:
    """(epochs, seconds of training passes) until the default cnn first reaches TARGET val acc."""
    seconds = []

    def on_epoch(result):
        seconds.append(result.seconds)
        if result.val_acc >= TARGET:
            raise _Reached

    set_determinism(cfg.seed, cfg.train.deterministic)
    try:
        fit(fast_layout(create_model(MODEL)).to(device), train, val, cfg.model(MODEL), norm, seed=cfg.seed, amp=amp,
            on_epoch=on_epoch)
    except _Reached:
        return len(seconds), sum(seconds)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tta", action="store_true", help="skip the time to accuracy")
    args = parser.parse_args()
    cfg = load_config("params.yaml", model_names())
    device = select_device(cfg.device)
    amp = uses_bf16(device, cfg.train.amp)
    set_determinism(cfg.seed, cfg.train.deterministic)
    stats = read_stats(DATA)
    train, val = (load_split(DATA / f"{s}.pt").to(device) for s in ("train", "val"))
    norm = Normalizer(**stats)
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name() or cpu
    print(f"machine: {name}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}, "
          f"precision {'bf16' if amp else 'fp32'} (the textbook loop: fp32), model {MODEL}, batch {cfg.model(MODEL).batch_size}")
    loops = {"textbook": lambda: textbook_epoch(cfg, device, stats, amp=False),  # the tutorial's: fp32
             "project": lambda: project_epoch(cfg, device, train, val, norm, amp),
             "project, fp32 NCHW": lambda: project_epoch(cfg, device, train, val, norm, amp, fast=False)}
    if device.type == "cuda":
        loops["project, deterministic off"] = lambda: project_epoch(cfg, device, train, val, norm, amp,
                                                                    deterministic=False)
        loops["project, torch.compile"] = lambda: project_epoch(cfg, device, train, val, norm, amp, compile=True)
    rates = {loop: [] for loop in loops}
    for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits all alike
        for loop, run in loops.items():
            rates[loop].append(run())
    print("| loop | " + " | ".join(f"repeat {i + 1}" for i in range(args.repeats)) + " | median img/s |")
    print("|---|" + "---|" * (args.repeats + 1))
    for loop, values in rates.items():
        print(f"| {loop} | " + " | ".join(f"{v:,.0f}" for v in values) + f" | {statistics.median(values):,.0f} |")
    ratio = statistics.median(rates["project"]) / statistics.median(rates["textbook"])
    print(f"project / textbook (medians): {ratio:.2f}x")
    if not args.no_tta:
        reached = time_to_accuracy(cfg, device, train, val, norm, amp)
        if reached is None:
            print(f"time to {TARGET:.1%} val acc: not reached in {cfg.model(MODEL).epochs} epochs")
        else:
            print(f"time to {TARGET:.1%} val acc (default {MODEL}): epoch {reached[0]}, "
                  f"{reached[1]:.1f} s of training passes")


def _cpu_name() -> str | None:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


if __name__ == "__main__":
    main()
