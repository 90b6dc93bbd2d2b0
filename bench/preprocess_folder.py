"""Preprocess of your own images (dataset folder): images per second on a generated folder of
20,000 JPEGs of 64x64 in 10 class folders, brought to 3x32x32, against a plain torchvision
`ImageFolder` + `DataLoader` pass (PIL decode, Resize, CenterCrop, both cores as workers) over
the same folder, in the same run, alternating, median of --repeats. "preprocess" is the stage's
whole work (scan, decode, split, stats, split files); "decode alone" the part ImageFolder does.

    .venv/bin/python bench/preprocess_folder.py [--images 20000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from mnistflow.core.config import DataConfig  # noqa: E402
from mnistflow.data.preprocess import preprocess  # noqa: E402
from mnistflow.data.synthetic import write_image_folder  # noqa: E402

SHAPE = (3, 32, 32)


def ours(root: Path, out: Path, threads: int) -> None:
    """The preprocess stage's whole work: scan, decode, resize, split, write the split files."""
    data = DataConfig(dataset="folder", mirror=None, verify=True, val_size=1000, path=str(root), shape=SHAPE,
                      test_size=0.2)
    preprocess(root, data, 0, {}, out, threads)


def decode_only(root: Path, workers: int) -> None:
    """The comparable pass: decode, resize and crop every image, no split files."""
    from mnistflow.data import folder

    images, _, _ = folder.decode(folder.scan(root), "all", SHAPE, workers)
    assert images.shape[1:] == SHAPE


def image_folder(root: Path, workers: int) -> None:
    """torchvision's usual way: decode and transform in DataLoader workers, batches stacked."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(str(root), transforms.Compose(
        [transforms.Resize(SHAPE[1]), transforms.CenterCrop(SHAPE[1:]), transforms.PILToTensor()]))
    images = torch.cat([x for x, _ in DataLoader(ds, batch_size=256, num_workers=workers)])
    assert images.shape == (len(ds), *SHAPE)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the decoding processes are the parallelism
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "images", classes=tuple(f"class{k}" for k in range(10)),
                                  per_class=args.images // 10, sizes=((64, 64),), jpeg_only=True)
        n = sum(1 for _ in root.rglob("*.jpg"))
        runs = {f"ImageFolder + DataLoader, {cores} workers": lambda: image_folder(root, cores),
                f"mnistflow decode alone, {cores} processes": lambda: decode_only(root, cores),
                "mnistflow preprocess, 1 process": lambda: ours(root, Path(tmp) / "out1", 1),
                f"mnistflow preprocess, {cores} processes": lambda: ours(root, Path(tmp) / "out2", cores)}
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternating: drift hits all alike
            for name, fn in runs.items():
                times[name].append(timed(fn))
    base = statistics.median(next(iter(times.values())))
    print(f"{n} JPEGs of 64x64 -> {'x'.join(map(str, SHAPE))}; {platform.processor() or platform.machine()}, "
          f"{cores} cores; median of {args.repeats}\n")
    print("| pass | seconds | images/s | vs ImageFolder |\n|---|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.2f} | {n / t:,.0f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
