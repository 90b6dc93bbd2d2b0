"""The tutorial's seq_cnn with and without its ReLU after the last Linear, on generated 3x32x32
data (class k: a coloured band at row 3k over noise), same seed, data and schedule; prints test
accuracy per epoch for both. `python bench/seq_cnn_relu.py [epochs]`."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnistflow.models.seq_cnn import seq_cnn  # noqa: E402


def data(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.rand(n, 3, 32, 32, generator=gen) * 0.6
    colours = torch.rand(10, 3, generator=gen)
    for i, k in enumerate(labels.tolist()):
        images[i, :, 3 * k:3 * k + 2, :] += colours[k][:, None, None]
    return (images - 0.5) / 0.5, labels


def run(clipped: bool, epochs: int) -> list[float]:
    torch.manual_seed(0)
    model = seq_cnn()
    if clipped:
        model.append(nn.ReLU())
    (x, y), (xt, yt) = data(2000, 1), data(500, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    accs = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        model.train()
        for b in range(0, len(x), 64):
            idx = order[b:b + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accs.append((model(xt).argmax(1) == yt).float().mean().item())
    return accs


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(2)
    for clipped in (False, True):
        accs = run(clipped, epochs)
        print(f"{'ReLU after the last Linear' if clipped else 'logits as they are      '}: "
              + " ".join(f"{a:.3f}" for a in accs))
