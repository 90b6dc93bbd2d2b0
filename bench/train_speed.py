"""Training speed on this machine: the tutorial's textbook loop against the project's loop on the
same model (the default cnn), data, optimizer and batch size, one epoch of training passes each,
in a fresh process per measurement (the numerics pins hold for a whole process), alternating
repeats; then, optionally, the time to accuracy: the seconds of training passes until the default
cnn first reaches 92.0% validation accuracy, with the default numerics.

Rows:
- textbook: torchvision's dataset, ToTensor and Normalize per image, a DataLoader with 2
  workers, fp32 with PyTorch's default numerics (what the tutorial runs);
- textbook, portable pins: the same loop under the portable pins (mnistflow.core.numerics);
- project, portable: `fit` as the train stage runs it with numerics portable (the default);
- project, fast: the same with numerics fast (bf16 where the CPU has bf16 units, oneDNN,
  channels-last);
- on CUDA: project with deterministic kernels off, and with torch.compile.

    make bench            # or: python bench/train_speed.py [--repeats 3] [--tta]

Needs the default pipeline's data (`dvc repro preprocess`, which `make bench` runs first).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mnistflow.core.config import load_config  # noqa: E402  (no torch: the pins come first)
from mnistflow.core.numerics import pin  # noqa: E402

MODEL, TARGET = "cnn", 0.92
DATA = ROOT / "data/processed"
ROWS = {  # row: (loop, numerics mode or None for PyTorch's defaults, options)
    "textbook": ("textbook", None, {}),
    "textbook, portable pins": ("textbook", "portable", {}),
    "project, portable": ("project", "portable", {}),
    "project, fast": ("project", "fast", {}),
}
CUDA_ROWS = {"project, deterministic off": ("project", "fast", {"deterministic": False}),
             "project, torch.compile": ("project", "fast", {"compile": True})}


def textbook_epoch(cfg, device, stats) -> float:
    """The tutorial's loop: torchvision's dataset, ToTensor and Normalize per image, a DataLoader
    with 2 workers, batch by batch to the device, fp32. Images per second of one training pass."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from mnistflow.models import create_model
    from mnistflow.train.optim import build_optimizer

    mc = cfg.model(MODEL)
    ds = torchvision.datasets.FashionMNIST(str(ROOT / f"data/raw/{cfg.data.dataset}"), train=True, download=False,
                                           transform=transforms.Compose([transforms.ToTensor(),
                                                                         transforms.Normalize(stats["mean"], stats["std"])]))
    loader = DataLoader(ds, batch_size=mc.batch_size, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model = create_model(MODEL).to(device).train()
    optimizer = build_optimizer(model.parameters(), mc)
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def project_fit(cfg, device, mode: str, epochs: int = 1, deterministic: bool = True, compile: bool = False,
                on_epoch=lambda r: None) -> list:
    """The project's `fit` as the train stage runs it (channels-last, bf16 where it applies)."""
    import torch

    from mnistflow.core.device import fast_layout, set_determinism, uses_bf16
    from mnistflow.models.inference import Normalizer
    from mnistflow.models import create_model
    from mnistflow.data.splits import load_split, read_stats
    from mnistflow.train.training import fit

    set_determinism(cfg.seed, deterministic, device)
    train, val = (load_split(DATA / f"{s}.pt").to(device) for s in ("train", "val"))
    model = fast_layout(create_model(MODEL)).to(device)
    if compile:
        model = torch.compile(model)  # its compile time falls in the measured epoch
    return fit(model, train, val, cfg.model(MODEL).model_copy(update={"epochs": epochs}), Normalizer(**read_stats(DATA)),
               seed=cfg.seed, amp=uses_bf16(device, cfg.train.amp, mode), on_epoch=on_epoch)


def measure(row: str) -> dict:
    """One row's epoch in this (fresh) process."""
    loop, mode, options = {**ROWS, **CUDA_ROWS}[row]
    cfg = load_config(ROOT / "params.yaml")
    if mode is not None:
        pin(mode, cfg.numerics.threads)
    import torch

    from mnistflow.core.device import configure, select_device
    from mnistflow.core.numerics import what_ran
    from mnistflow.data.splits import read_stats

    if mode is not None:
        configure(mode, cfg.numerics.threads)
    if loop == "textbook":  # none of the project's levers (select_device's malloc setting among them)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)
        rate = textbook_epoch(cfg, device, read_stats(DATA))
    else:
        device = select_device(cfg.device)
        (result,) = project_fit(cfg, device, mode, **options)
        rate = result.images_per_second
    return {"rate": rate, "device": str(device), **what_ran()}


def time_to_accuracy() -> tuple[int, float] | None:
    """(epochs, seconds of training passes) until the default cnn first reaches TARGET val acc."""
    cfg = load_config(ROOT / "params.yaml")
    pin(cfg.numerics.mode, cfg.numerics.threads)
    from mnistflow.core.device import configure, select_device

    device = select_device(cfg.device)
    configure(cfg.numerics.mode, cfg.numerics.threads)
    seconds = []

    class Reached(Exception):
        pass

    def on_epoch(result):
        seconds.append(result.seconds)
        if result.val_acc >= TARGET:
            raise Reached

    try:
        project_fit(cfg, device, cfg.numerics.mode, epochs=cfg.model(MODEL).epochs, on_epoch=on_epoch)
    except Reached:
        return len(seconds), sum(seconds)
    return None


def in_fresh_process(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", action="store_true", help="also the time to 92%% val acc (minutes)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # a fresh process measuring one row
    parser.add_argument("--tta-inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(args.row)))
        return
    if args.tta_inner:
        print(json.dumps(time_to_accuracy()))
        return
    cfg = load_config(ROOT / "params.yaml")
    first = in_fresh_process("--row", "project, portable")  # also a warm-up of the page cache
    rows = {**ROWS, **(CUDA_ROWS if first["device"].startswith("cuda") else {})}
    print(f"machine: {_cpu_name()}, {cfg.numerics.threads} threads, device {first['device']}, model {MODEL}, "
          f"batch {cfg.model(MODEL).batch_size}; portable: kernels {first['cpu_isa']}, MKL {first['mkl_branch']}")
    rates = {row: [] for row in rows}
    for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits all alike
        for row in rows:
            rates[row].append(in_fresh_process("--row", row)["rate"])
    print("| loop | " + " | ".join(f"repeat {i + 1}" for i in range(args.repeats)) + " | median img/s |")
    print("|---|" + "---|" * (args.repeats + 1))
    for row, values in rates.items():
        print(f"| {row} | " + " | ".join(f"{v:,.0f}" for v in values) + f" | {statistics.median(values):,.0f} |")
    textbook = statistics.median(rates["textbook"])
    for row in ("project, portable", "project, fast"):
        print(f"{row} / textbook (medians): {statistics.median(rates[row]) / textbook:.2f}x")
    if args.tta:
        reached = in_fresh_process("--tta-inner")
        if reached is None:
            print(f"time to {TARGET:.1%} val acc: not reached in {cfg.model(MODEL).epochs} epochs")
        else:
            print(f"time to {TARGET:.1%} val acc (default {MODEL}, numerics {cfg.numerics.mode}): epoch {reached[0]}, "
                  f"{reached[1]:.1f} s of training passes")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
