"""What a run leaves behind besides checkpoints: a JSON-lines metrics file per run, a PNG of the
curves per architecture (like the seeds' d2l figures), and the summary table at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


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


def format_table(rows: Iterable[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows of dicts -> an aligned text table; columns are (key, header, format spec)."""
    rows = list(rows)
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([format(r[k], spec) if r.get(k) is not None else "-" for k, _, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
