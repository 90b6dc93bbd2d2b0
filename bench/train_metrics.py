"""What torchmetrics would cost the training loop, which counts its own accuracy per epoch (a sum of
correct predictions on the device): per batch, the loop's count against a MulticlassAccuracy
update on the same logits (batch 128, 10 classes), alternating, median of --repeats; per epoch
of the default cnn (430 batches), against the epoch's training pass; and the import a train
stage would add, in a fresh Python after torch.

    .venv/bin/python bench/train_metrics.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402

NUMERICS = load_config().numerics
pin(NUMERICS.mode, NUMERICS.threads)  # as the train stage
import torch  # noqa: E402

BATCHES = 430  # batches of 128 in an epoch of the 55,000 training images


def per_batch_seconds(update, logits: torch.Tensor, labels: torch.Tensor, n: int = 2000) -> float:
    for _ in range(50):
        update(logits, labels)
    start = time.perf_counter()
    for _ in range(n):
        update(logits, labels)
    return (time.perf_counter() - start) / n


def import_seconds() -> float:
    code = "import torch, time; t = time.perf_counter(); import torchmetrics.classification; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epoch-seconds", type=float, default=None,
                        help="the cnn's training pass, for the per-epoch share (default: the levers' figure, 9.47 s)")
    args = parser.parse_args()
    from torchmetrics.classification import MulticlassAccuracy

    torch.set_num_threads(NUMERICS.threads)
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(128, 10, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    correct = torch.zeros((), dtype=torch.int64)
    accuracy = MulticlassAccuracy(10, average="micro")

    def own(lg, y):
        correct.add_((lg.argmax(1) == y).sum())

    ways = {"own count": own, "torchmetrics update": accuracy.update}
    times = {way: [] for way in ways}
    for _ in range(args.repeats):  # alternating: drift hits both alike
        for way, update in ways.items():
            times[way].append(per_batch_seconds(update, logits, labels))
    epoch = args.epoch_seconds or 9.47
    print(f"torch {torch.__version__}, numerics {NUMERICS.mode}, {torch.get_num_threads()} threads")
    print("| per batch of 128 | median | per epoch (430 batches) | share of a cnn epoch |\n|---|---|---|---|")
    for way, values in times.items():
        t = statistics.median(values)
        print(f"| {way} | {t * 1e6:.1f} µs | {t * BATCHES * 1e3:.1f} ms | {t * BATCHES / epoch:.2%} |")
    imports = statistics.median(import_seconds() for _ in range(3))
    print(f"importing torchmetrics after torch: {imports:.2f} s per train stage (median of 3)")


if __name__ == "__main__":
    main()
