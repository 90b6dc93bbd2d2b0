"""Every figure. Matplotlib runs headless (Agg); callers save or log the returned Figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; figures are built as Figure objects, never through pyplot's global state
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def loss_curve(history, title: str) -> Figure:
    """Train and validation loss (left) and accuracy (right) per epoch."""
    epochs = [r.epoch for r in history]
    fig = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r.train_loss for r in history], marker="o", label="train")
    ax_loss.plot(epochs, [r.val_loss for r in history], marker="o", label="val")
    ax_acc.plot(epochs, [r.train_acc for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [r.val_acc for r in history], marker="o", label="val")
    for ax, label in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig
