"""Every figure. Matplotlib runs headless (Agg); callers save or log the returned Figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; figures are built as Figure objects, never through pyplot's global state
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _per_epoch(*axes: tuple, legend_size: int | None = 8) -> None:
    """Axes of (ax, y label) pairs over whole epochs, with a grid and a legend."""
    for ax, label in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)


def loss_curve(history: list[dict], title: str) -> Figure:
    """Train and validation loss (left) and accuracy (right) per epoch, from the history's rows."""
    def column(key: str) -> list[float]:
        return [float(r[key]) for r in history]

    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, column("train_loss"), marker="o", label="train")
    ax_loss.plot(epochs, column("val_loss"), marker="o", label="val")
    ax_acc.plot(epochs, column("train_acc"), marker="o", label="train")
    ax_acc.plot(epochs, column("val_acc"), marker="o", label="val")
    _per_epoch((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy"), legend_size=None)
    fig.suptitle(title)
    return fig


def confusion_matrix(confusion, classes: list[str], title: str) -> Figure:
    """Row-normalized confusion matrix: each row shows where one true class went."""
    counts = np.asarray(confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = Figure(figsize=(7, 6), layout="tight")
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in ticks:
        for j in ticks:
            if norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    return fig


def reliability_diagram(bins: dict[str, list[dict]], ece: dict[str, float], title: str) -> Figure:
    """Confidence against accuracy per bin of the top class's probability (a calibrated model lies on
    the diagonal): the clean test set as bars, the other sets as lines; below, how many test images
    fall in each bin."""
    fig = Figure(figsize=(7, 6.2), layout="tight")
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for i, (set_name, rows) in enumerate(bins.items()):
        label = f"{set_name} (ECE {ece[set_name]:.3f})"
        mids = [(r["low"] + r["high"]) / 2 for r in rows]
        if i == 0:  # the clean test set
            ax.bar(mids, [r["accuracy"] for r in rows], width=[max(r["high"] - r["low"], 0.02) for r in rows],
                   color="C0", alpha=0.6, edgecolor="C0", label=label)
            ax_count.bar(mids, [r["count"] for r in rows], width=[max(r["high"] - r["low"], 0.02) for r in rows],
                         color="C0", alpha=0.6)
        else:
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", color=f"C{i}",
                    label=label)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    ax_count.set(xlabel="confidence (probability of the predicted class)", ylabel="test images")
    ax_count.set_yscale("log")
    ax_count.grid(alpha=0.3)
    return fig


def _show(ax, image, cmap: str = "gray", centred: bool = False) -> None:
    """One image, (H,W) or (C,H,W): one channel through `cmap`, three in colour. `centred`: the
    scale is symmetric about 0, so 0 is the neutral colour (weights; grey in colour)."""
    image = np.asarray(image)
    image = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    vmax = (float(np.abs(image).max()) or 1.0) if centred else None
    if image.ndim == 2:
        ax.imshow(image, cmap=cmap, vmin=None if vmax is None else -vmax, vmax=vmax)
        return
    image = image.transpose(1, 2, 0)  # channels last, as imshow takes colour
    if centred:
        image = image / (2 * vmax) + 0.5
    elif image.dtype != np.uint8:  # floats (a filter): stretched to 0..1
        image = (image - image.min()) / ((image.max() - image.min()) or 1.0)
    ax.imshow(image)


def image_grid(images, titles: list[str], title: str, colors: list[str] | None = None,
               columns: int = 4, cmap: str = "gray", centred: bool = False, cell: float = 1.7) -> Figure:
    """A grid of images, (H,W) or (C,H,W), each with its title (the tutorials' first look at
    data), `cell` inches a side: the report page shows a figure up to 7 inches wide at its size.
    `cmap` and `centred`: as `_show`."""
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(cell * columns, (cell + 0.25) * rows + 0.4), layout="tight")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, image, label, color in zip(axes, images, titles, colors or ["black"] * len(titles)):
        _show(ax, image, cmap, centred)
        ax.set_title(label, color=color, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def message(text: str) -> Figure:
    """A figure that says there is nothing to draw, where a reader expects one."""
    fig = Figure(figsize=(6, 1.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    return fig


def loss_curves(histories: dict[str, list[dict]]) -> Figure:
    """Train (dashed) and validation (solid) loss and accuracy of every model on shared axes."""
    fig = Figure(figsize=(12, 4.5), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (model, rows) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = [int(r["epoch"]) for r in rows]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], "--", color=color, label=f"{model} train")
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], "-", color=color, label=f"{model} val")
    _per_epoch((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy"))
    fig.suptitle("Loss and accuracy per epoch")
    return fig


def optimizer_curves(result: dict) -> Figure:
    """Validation loss and accuracy per epoch of one model trained with each optimizer."""
    fig = Figure(figsize=(12, 4.5), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for optimizer, r in result["optimizers"].items():
        epochs = range(1, len(r["val_loss"]) + 1)
        ax_loss.plot(epochs, r["val_loss"], marker="o", label=f"{optimizer} (lr {r['lr']:g})")
        ax_acc.plot(epochs, r["val_acc"], marker="o", label=f"{optimizer} (lr {r['lr']:g})")
    _per_epoch((ax_loss, "validation loss"), (ax_acc, "validation accuracy"))
    fig.suptitle(f"{result['model']} on {result['dataset']}: one run per optimizer, seed {result['seed']}")
    return fig


def study_history(study: dict) -> Figure:
    """A hyperparameter study: each completed trial's objective with the best so far, and the
    objective against the first searched param (on a log scale where the search was)."""
    done = sorted((t for t in study["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["trial"])
    fig = Figure(figsize=(12, 4.5), layout="tight")
    ax_history, ax_param = fig.subplots(1, 2)
    values = [t["value"] for t in done]
    ax_history.plot([t["trial"] for t in done], values, "o", label="trial")
    ax_history.step([t["trial"] for t in done], np.maximum.accumulate(values), where="post", label="best so far")
    ax_history.set_xlabel("trial")
    ax_history.set_ylabel(study["objective"])
    ax_history.legend()
    key = next(iter(study["space"]))
    ax_param.plot([t["params"][key] for t in done], values, "o")
    if "log" in study["space"][key]:
        ax_param.set_xscale("log")
    ax_param.set_xlabel(key)
    ax_param.set_ylabel(study["objective"])
    fig.suptitle(f"{study['model']} on {study['dataset']}: study {study['study']}, {len(done)} trials")
    return fig


def feature_maps(image, kernel, output, pooled, title: str) -> Figure:
    """An input image, one first-layer filter (each (C,H,W) or (H,W)), its output and the
    max-pooled output."""
    fig = Figure(figsize=(8.5, 2.8), layout="tight")
    panels = (("input", image), ("conv1 filter", kernel), ("filter output", output), ("max-pooled", pooled))
    for ax, (label, data) in zip(fig.subplots(1, 4), panels):
        data = np.asarray(data)
        _show(ax, data)
        ax.set_title(f"{label} {data.shape[1:] if data.ndim == 3 and len(data) == 1 else data.shape}")
        ax.axis("off")
    fig.suptitle(title)
    return fig


def robustness(accuracy: dict[str, dict[str, float]]) -> Figure:
    """Accuracy of every model (group) on every set (bar)."""
    models = list(accuracy)
    sets = list(next(iter(accuracy.values())))
    width = 0.8 / len(sets)
    fig = Figure(figsize=(8, 4.5), layout="tight")
    ax = fig.subplots()
    for j, set_name in enumerate(sets):
        xs = [i + (j - (len(sets) - 1) / 2) * width for i in range(len(models))]
        bars = ax.bar(xs, [accuracy[m][set_name] for m in models], width, label=set_name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(title="test set")
    ax.set_title("Robustness: accuracy on the clean test set and its crop variants")
    return fig
