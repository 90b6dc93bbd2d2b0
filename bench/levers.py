"""What each CPU speed lever of the training loop brings, measured on this machine with the
params' numerics (portable by default), each against its own absence in the same run
(alternating, median of --repeats):

- oneDNN: one cnn epoch in a fresh process with oneDNN (capped at AVX2 in portable mode) and
  channels-last weights, against ATen's own convolutions (oneDNN off, NCHW);
- malloc: one cnn epoch in a fresh process with glibc's malloc keeping freed memory
  (`device.keep_freed_memory`) against the default, which hands it back after every batch;
- NaN fill: one cnn epoch with deterministic mode's NaN fill of new tensors off and on;
- fused Adam: one optimizer step on the mlp's parameters, fused against the default;
- evaluation: the cnn's fp32 inference on the validation set, channels-last in batches of 256
  against NCHW in batches of 1000.

    .venv/bin/python bench/levers.py [--repeats 3]    (after `dvc repro preprocess`)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402

NUMERICS = load_config().numerics
pin(NUMERICS.mode, NUMERICS.threads)  # before torch loads, as in every stage
import torch  # noqa: E402

from mnistflow.core.device import configure, fast_layout, keep_freed_memory, set_determinism, uses_bf16  # noqa: E402
from mnistflow.models.inference import Normalizer  # noqa: E402
from mnistflow.models import create_model, model_names  # noqa: E402
from mnistflow.data.splits import load_split, read_stats  # noqa: E402
from mnistflow.train.training import fit  # noqa: E402

DATA = Path("data/processed")
CPU = torch.device("cpu")


def cnn_epoch_seconds(fill: bool = False, onednn: bool = True) -> float:
    """One epoch of the default cnn as the train stage runs it on the CPU: seconds of its training pass."""
    cfg = load_config("params.yaml", model_names())
    configure(cfg.numerics.mode, cfg.numerics.threads)
    torch.backends.mkldnn.enabled = onednn
    set_determinism(cfg.seed, True)
    torch.use_deterministic_algorithms(True)  # the NaN fill happens in deterministic mode alone
    torch.utils.deterministic.fill_uninitialized_memory = fill
    train, val = (load_split(DATA / f"{s}.pt") for s in ("train", "val"))
    model = fast_layout(create_model("cnn")) if onednn else create_model("cnn")
    (result,) = fit(model, train, val, cfg.model("cnn").model_copy(update={"epochs": 1}),
                    Normalizer(**read_stats(DATA)), seed=cfg.seed,
                    amp=uses_bf16(CPU, cfg.train.amp, cfg.numerics.mode))
    return result.seconds


def in_fresh_process(keep: bool = True, onednn: bool = True) -> float:
    """The cnn epoch in a new Python: malloc's setting and oneDNN's kernels hold for a whole process."""
    code = (f"import sys; sys.argv = ['levers']; sys.path.insert(0, 'bench'); import levers; "
            f"keep = {keep} and levers.keep_freed_memory(); print(levers.cnn_epoch_seconds(onednn={onednn}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": "src"})
    return float(out.stdout.split()[-1])


def adam_step_seconds(fused: bool) -> float:
    model = create_model("mlp")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    for _ in range(5):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(200):
        optimizer.step()
    return (time.perf_counter() - start) / 200


@torch.inference_mode()
def inference_seconds(channels_last: bool, batch: int) -> float:
    val = load_split(DATA / "val.pt")
    norm = Normalizer(**read_stats(DATA))
    model = create_model("cnn").eval()
    model = fast_layout(model) if channels_last else model
    model(norm(val.images[:batch]))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(val), batch):
        model(norm(val.images[i:i + batch]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    levers = {  # name: (unit, the project's way, the way without it)
        "oneDNN and channels-last, not ATen's convolutions (cnn epoch)": (
            "s", lambda: in_fresh_process(onednn=True), lambda: in_fresh_process(onednn=False)),
        "malloc keeps freed memory (cnn epoch)": ("s", lambda: in_fresh_process(True),
                                                  lambda: in_fresh_process(False)),
        "no NaN fill (cnn epoch)": ("s", lambda: cnn_epoch_seconds(fill=False), lambda: cnn_epoch_seconds(fill=True)),
        "fused Adam (mlp step)": ("ms", lambda: 1e3 * adam_step_seconds(True), lambda: 1e3 * adam_step_seconds(False)),
        "eval channels-last, batch 256 (cnn, val set)": ("s", lambda: inference_seconds(True, 256),
                                                         lambda: inference_seconds(False, 1000)),
    }
    keep_freed_memory()  # as the stages run (the malloc lever runs in processes of its own)
    configure(NUMERICS.mode, NUMERICS.threads)
    print(f"torch {torch.__version__}, numerics {NUMERICS.mode}, {torch.get_num_threads()} threads, kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, MKL {os.environ.get('MKL_CBWR', 'auto')}, "
          f"bf16: {uses_bf16(CPU, True, NUMERICS.mode)}")
    print("| lever | with | without | without / with |\n|---|---|---|---|")
    for name, (unit, with_it, without) in levers.items():
        times = {"with": [], "without": []}
        for _ in range(args.repeats):  # alternating: drift hits both alike
            times["with"].append(with_it())
            times["without"].append(without())
        w, wo = statistics.median(times["with"]), statistics.median(times["without"])
        print(f"| {name} | {w:.3g} {unit} | {wo:.3g} {unit} | {wo / w:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
