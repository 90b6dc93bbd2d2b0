"""What `torch.use_deterministic_algorithms(True)` changes on the CPU: every registered model, a
few Adam steps with per-batch shifts in the stage's layout (channels-last), flag on and off, md5
of the weights; and what setting it costs a fresh process (it imports torch's compiler config).

    .venv/bin/python bench/determinism.py [--numerics portable|fast]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def weights_md5(name: str, deterministic: bool) -> str:
    import torch
    import torch.nn.functional as F

    from mnistflow.core.device import fast_layout
    from mnistflow.data.transforms import random_shift
    from mnistflow.models import create_model

    torch.use_deterministic_algorithms(deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.manual_seed(0)
    shape = (3, 32, 32) if name == "seq_cnn" else (1, 28, 28)
    model = fast_layout(create_model(name, shape, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (512, *shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (512,), generator=gen)
    for i in range(0, 512, 64):
        x = random_shift(images[i:i + 64], 2, gen).float() / 255
        loss = F.cross_entropy(model(x), labels[i:i + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return hashlib.md5(buf.getvalue()).hexdigest()


def seconds(code: str, repeats: int = 3) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        runs.append(time.perf_counter() - start)
    return sorted(runs)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numerics", choices=["portable", "fast"], default="portable")
    args = parser.parse_args()
    from mnistflow.core.numerics import pin
    pin(args.numerics, 2)  # before torch loads, as the stages do
    from mnistflow.models import model_names

    print(f"{'model':10} {'flag on':12} {'flag off':12} weights")
    for name in model_names():
        on, off = weights_md5(name, True), weights_md5(name, False)
        print(f"{name:10} {on[:12]:12} {off[:12]:12} {'identical' if on == off else 'DIFFER'}", flush=True)
    base = seconds("import torch")
    flag = seconds("import torch; torch.use_deterministic_algorithms(True)")
    print(f"a fresh process: import torch {base:.2f} s; and set the flag {flag:.2f} s (+{flag - base:.2f} s)")


if __name__ == "__main__":
    main()
