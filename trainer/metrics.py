"""What a run leaves behind besides checkpoints: a JSON-lines metrics file per run and a PNG of the
curves per architecture (like the seeds' d2l figures)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def runs_dir(artifacts: str | os.PathLike, arch: str) -> Path:
    return Path(artifacts) / "runs" / arch


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Train loss, train accuracy and test accuracy against (possibly fractional) epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h["epoch_float"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(x, [h["train_loss"] for h in history], "-o", ms=3, label="train loss")
    ax.plot(x, [h["train_acc"] for h in history], "--o", ms=3, label="train acc")
    ax.plot(x, [h["test_acc"] for h in history], "-.o", ms=3, label="test acc")
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
