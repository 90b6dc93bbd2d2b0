"""Training processes that share the cores: OpenMP's waiting policy. One epoch of each default
model on N Fashion-MNIST training images (after `dvc repro preprocess`), as the train stage fits
it, alone and as two processes at once, with libgomp's default waiting (its threads spin up to
300,000 times at every barrier before they sleep) and with `OMP_WAIT_POLICY=PASSIVE`; alternating,
each in a fresh process (libgomp reads the policy when it loads). Seconds of each `fit`, medians.

    .venv/bin/python bench/shared_cpu.py [--images 12000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mlp", "cnn", "lenet")
POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def fit_once(model: str, images: int) -> None:
    """In this process: pinned as the train stage is, one epoch of `model`; prints its seconds."""
    from mnistflow.core.config import ModelConfig, load_config
    from mnistflow.core.numerics import pin
    from mnistflow.models import model_names

    cfg = load_config(ROOT / "params.yaml", model_names())
    pin(cfg.numerics.mode, cfg.numerics.threads)
    from mnistflow.core.device import configure, fast_layout, set_determinism
    from mnistflow.data.splits import Split, load_split, pixel_stats
    from mnistflow.models import create_model
    from mnistflow.models.inference import Normalizer
    from mnistflow.train.training import fit

    configure(cfg.numerics.mode, cfg.numerics.threads)
    train, val = (load_split(ROOT / "data/processed" / f"{s}.pt") for s in ("train", "val"))
    train, val = Split(train.images[:images], train.labels[:images]), Split(val.images[:images // 5],
                                                                            val.labels[:images // 5])
    settings = ModelConfig.model_validate({**getattr(cfg.train, model).model_dump(), "epochs": 1,
                                           "early_stop": {"patience": 0}})
    norm = Normalizer(**{k: tuple(v) for k, v in pixel_stats(train).items()})
    set_determinism(0, True)
    net = fast_layout(create_model(model))
    start = time.perf_counter()
    fit(net, train, val, settings, norm, seed=0)
    print(time.perf_counter() - start)


def timed(model: str, images: int, policy: str, at_once: int) -> list[float]:
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, **POLICIES[policy],
           "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, __file__, "--inner", model, "--images", str(images)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(at_once)]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inner", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        return fit_once(args.inner, args.images)
    if not (ROOT / "data/processed/train.pt").exists():
        sys.exit("run `dvc repro preprocess` (or make repro) first: this bench reads data/processed")
    times: dict[tuple, list[float]] = {}
    for _ in range(args.repeats):
        for model in MODELS:
            for policy in POLICIES:
                for at_once in (1, 2):
                    times.setdefault((model, policy, at_once), []).extend(timed(model, args.images, policy, at_once))
    from pipeline_overhead import cpu_name  # beside this script

    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; one epoch on {args.images} images, seconds of fit, median of "
          f"{args.repeats} (pairs: of both processes)")
    print("| model | alone, default | alone, passive | two at once, default | two at once, passive | "
          "two at once: default / passive |")
    print("|---|---|---|---|---|---|")
    for model in MODELS:
        med = {(p, n): statistics.median(times[(model, p, n)]) for p in POLICIES for n in (1, 2)}
        print(f"| {model} | {med['default', 1]:.2f} | {med['passive', 1]:.2f} | {med['default', 2]:.2f} | "
              f"{med['passive', 2]:.2f} | {med['default', 2] / med['passive', 2]:.2f}x |")


if __name__ == "__main__":
    main()
