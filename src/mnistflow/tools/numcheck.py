"""Does portable numerics give the same bytes on other CPUs? Train the three default models
through the project's own `fit` on tiny generated data, with the crop variant, the statistics and
the evaluation metrics of the pipeline, in a fresh process: natively, or under Debian's
qemu-user as another x86-64 CPU (`qemu-x86_64 -cpu Haswell-v4`: Intel; `-cpu EPYC-Rome`: AMD;
about 50x slower). Prints the md5 of every result, and the kernels that ran.

    mnistflow numcheck [--cpu native|Haswell-v4|EPYC-Rome ...] [--threads 2] [--drop PIN]

`--drop` leaves one pin out (`ATEN_CPU_CAPABILITY`, `MKL_CBWR`, `ONEDNN_MAX_CPU_ISA`, or
`threads`: one thread instead of the pinned count), to show what it holds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mnistflow.core.errors import MnistflowError, run_stage
from mnistflow.cli import Parser

PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "threads")
# The default models' kinds of settings (params.yaml), fixed here so the md5s stay the check's own.
SETTINGS = {
    "mlp": {"optimizer": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0},
    "cnn": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "shift": 1},
    "lenet": {"optimizer": "adam", "lr": 0.003, "momentum": 0.9, "weight_decay": 0.0, "shift": 1},
}
SRC = Path(__file__).resolve().parents[1]


def _md5(*arrays) -> str:
    digest = hashlib.md5()
    for array in arrays:
        digest.update(array.contiguous().numpy().tobytes() if hasattr(array, "contiguous") else array)
    return digest.hexdigest()


def compute(threads: int) -> dict:
    """In this process (pinned by `numerics.pin`): every result's md5."""
    import numpy as np
    import torch

    from mnistflow.core.config import ModelConfig, VariantConfig
    from mnistflow.core.device import configure, fast_layout, set_determinism
    from mnistflow.evaluate.evaluation import evaluate_split
    from mnistflow.models.inference import Normalizer
    from mnistflow.models import create_model
    from mnistflow.core.numerics import what_ran
    from mnistflow.data.preprocess import split_train_val
    from mnistflow.data.splits import Split, pixel_stats
    from mnistflow.data.transforms import make_variant
    from mnistflow.data.synthetic import band_images
    from mnistflow.train.training import fit

    configure("portable", threads)
    rng = np.random.default_rng(0)
    # 128 training images after the 64 of validation: every pin left out still shows, and a run
    # under qemu takes 30% less time than with 256 (120 s against 170 s on an Intel Xeon)
    data = [Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)))
            for images, labels in (band_images(192, rng), band_images(96, rng))]
    train, val = split_train_val(data[0], 64, seed=0)
    test, crop = data[1], make_variant(data[1], "crop22", VariantConfig(crop=22), seed=0)
    stats = pixel_stats(train)
    norm = Normalizer(**{k: tuple(v) for k, v in stats.items()})
    md5 = {"preprocess": _md5(crop.images, json.dumps(stats).encode())}
    for name, settings in SETTINGS.items():
        set_determinism(0, True)
        cfg = ModelConfig.model_validate({"shift": 0, **settings, "scheduler": {"name": "cosine"}, "epochs": 2,
                                          "batch_size": 32})
        model = fast_layout(create_model(name))  # as the train stage
        history = fit(model, train, val, cfg, norm, seed=0)
        evaluation = {}
        for set_name, split in (("test", test), ("crop22", crop)):
            metrics, _, bins = evaluate_split(model, split, norm, [str(i) for i in range(10)])
            evaluation[set_name] = {**metrics, "reliability": bins}
        md5[name] = _md5(*model.state_dict().values())
        md5[f"{name} evaluation"] = _md5(json.dumps([[r.row() for r in history], evaluation]).encode())
    return {**what_ran(), "md5": md5}


def run(cpu: str = "native", threads: int = 2, drop: str | None = None, timeout: float = 1800) -> dict:
    """`compute` in a fresh process, pinned as a portable stage is, natively or under qemu-user."""
    env = dict(os.environ)  # `pin` sets the pins in the new process
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "mnistflow.tools.numcheck", "--inner", "--threads", str(threads)] + \
        (["--drop", drop] if drop else [])
    if cpu != "native":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise MnistflowError("qemu-x86_64 is not installed (Debian: apt-get install qemu-user; make test-tools)")
        cmd = [qemu, "-cpu", cpu, *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        noise = "TCG doesn't support"  # qemu's notes on CPU features it leaves out; harmless here
        raise MnistflowError(f"{' '.join(cmd)} failed:\n" + "\n".join(
            line for line in proc.stderr.splitlines() if noise not in line)[-3000:])
    return {"cpu": cpu, **json.loads(proc.stdout.splitlines()[-1])}


def main(argv: list[str] | None = None, prog: str = "mnistflow numcheck") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", nargs="+", default=["native"], help="native, or a qemu CPU model (qemu-x86_64 -cpu help)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--drop", choices=PINS, help="leave this pin out")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        from mnistflow.core.numerics import pin

        threads = 1 if args.drop == "threads" else args.threads
        pin("portable", threads)
        os.environ.pop(args.drop or "", None)
        print(json.dumps(compute(threads)))
        return
    results = [run(cpu, args.threads, args.drop) for cpu in args.cpu]
    for result in results:
        print(f"{result['cpu']}: kernels {result['cpu_isa']}, MKL {result['mkl_branch']}, {result['threads']} threads")
        for key, value in result["md5"].items():
            print(f"  {key:18} {value}")
    if len(results) > 1:
        same = all(r["md5"] == results[0]["md5"] for r in results)
        print("identical on every CPU" if same else "DIFFERENT between CPUs")
        sys.exit(0 if same else 1)


if __name__ == "__main__":
    run_stage(main)
