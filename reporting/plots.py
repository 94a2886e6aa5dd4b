"""The report's pictures: PNG files drawn with matplotlib's Agg backend (no display needed).

Each function draws one figure and writes it atomically (temporary file, then rename), so a page
never points at half a picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reporting.stats import Pair  # noqa: E402

DPI = 110
THUMBNAIL_SCALE = 3  # 28 px -> 84 px on the page


def curves(records: list[dict], title: str, path: Path) -> None:
    _save(curves_figure(records, title), path)


def curves_figure(records: list[dict], title: str) -> plt.Figure:
    """Train loss on its own axis, train and test accuracy on a 0-1 axis, against epochs trained.
    The epoch axis always starts at 0 and spans at least one epoch, so its ticks are whole epochs
    even for a run that stopped after a thousandth of one (its point then sits at 0, which is
    what happened; the title gives the figure)."""
    x = [r["epoch_float"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(7.5, 2.8), dpi=DPI)
    loss_ax.plot(x, [r["train_loss"] for r in records], "-o", ms=3, color="tab:red")
    loss_ax.set_title("train loss", fontsize=9)
    acc_ax.plot(x, [r["train_acc"] for r in records], "--o", ms=3, label="train")
    acc_ax.plot(x, [r["test_acc"] for r in records], "-o", ms=3, label="test")
    acc_ax.set_title("accuracy", fontsize=9)
    acc_ax.set_ylim(0, 1)
    acc_ax.legend(fontsize=8, loc="lower right")
    span = max(1.0, max(x))
    for ax in (loss_ax, acc_ax):
        ax.set_xlim(-0.04 * span, 1.04 * span)  # a point at 0 is drawn whole
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # no "epoch 2.5" ticks
        ax.set_xlabel("epochs trained", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    """Counts in every cell; colour by share of the true class, so rare classes read the same."""
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.2, 5.4), dpi=DPI)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (t, p), count in np.ndenumerate(matrix):
        if count:
            ax.text(p, t, str(count), ha="center", va="center", fontsize=7,
                    color="white" if share[t, p] > 0.5 else "black")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def pair_examples(images: np.ndarray, pairs: list[Pair], labels: Sequence[str],
                  path: Path) -> None:
    """One row per confused pair: its example test images, as the model saw them (28x28)."""
    columns = max(len(p.examples) for p in pairs)
    fig, axes = plt.subplots(len(pairs), columns, figsize=(1.1 * columns + 1.6, 1.25 * len(pairs)),
                             dpi=DPI, squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax in row:
            ax.axis("off")
        for ax, index in zip(row, pair.examples):
            ax.imshow(images[index, 0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"#{index}", fontsize=7)
        row[0].text(-0.15, 0.5, f"{labels[pair.truth]}\n→ {labels[pair.predicted]}",
                    transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(wspace=0.1, hspace=0.4)
    _save(fig, path)


def throughput_latency(points: list[dict], path: Path) -> None:
    """images/s against latency; a point per row at p50 (filled) and p99 (open), joined."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=DPI)
    for i, point in enumerate(points):
        color = f"C{i % 10}"
        xs = [point[k] for k in ("p50_ms", "p99_ms") if point.get(k) is not None]
        ax.plot(xs, [point["images_per_s"]] * len(xs), "-", color=color, alpha=0.5)
        if point.get("p50_ms") is not None:
            ax.plot(point["p50_ms"], point["images_per_s"], "o", color=color, label=point["label"])
        if point.get("p99_ms") is not None:
            ax.plot(point["p99_ms"], point["images_per_s"], "o", mfc="none", color=color,
                    label=None if point.get("p50_ms") is not None else point["label"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency per request, ms (filled: p50, open: p99)", fontsize=9)
    ax.set_ylabel("images/s", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def thumbnail(image: np.ndarray, path: Path) -> None:
    """One test image (uint8 [1, 28, 28]) at THUMBNAIL_SCALE, pixel for pixel, as the model saw
    it: no smoothing, no axes."""
    big = np.kron(image[0], np.ones((THUMBNAIL_SCALE, THUMBNAIL_SCALE), np.uint8))
    _atomic(path, lambda tmp: plt.imsave(tmp, big, cmap="gray", vmin=0, vmax=255, format="png"))


def _save(fig: plt.Figure, path: Path) -> None:
    def write(tmp: Path) -> None:
        try:
            fig.savefig(tmp, bbox_inches="tight", pad_inches=0.1)  # no empty margins around axes
        finally:
            plt.close(fig)
    _atomic(path, write)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    write(tmp)
    os.replace(tmp, path)
