"""The whole report: read every architecture's sources, measure its served model, draw the
figures, render the pages and write them. Pages are written atomically (temporary file, then
rename) after every picture they show is in place."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from reporting import benchmarks, card, html, plots, predict, sources
from trainer import data as fmnist


def build(artifacts: Path, out: Path, data_dir: Path | None, test_images: int | None,
          progress: bool = True) -> Path:
    """Write `out`/index.html and one `out`/<arch>.html per architecture; returns index.html."""
    test, test_note = load_test_set(data_dir, test_images)
    header = _header(artifacts, test, test_note)
    cards = [card.make(sources.read(artifacts, arch), test, test_note, out, progress)
             for arch in sources.architectures(artifacts)]
    benches, notes = benchmarks.read(artifacts)
    points = benchmarks.plot_points(benches)
    plot = None
    if points:
        plots.throughput_latency(points, out / "img" / "bench-throughput-latency.png")
        plot = "img/bench-throughput-latency.png"
    if test is None:
        notes.append(f"no confusion matrices: {test_note}")
    for c in cards:
        write_text(out / f"{c.arch}.html", html.card_page(c, header))
    index = out / "index.html"
    write_text(index, html.index(cards, benches, plot, header, notes))
    return index


def load_test_set(data_dir: Path | None, count: int | None) -> tuple[card.TestSet | None, str]:
    """The first `count` test images (all when None), or None and why (the report still builds:
    only the measured parts are missing). Never downloads: the report reads what is there."""
    try:
        data = fmnist.load(data_dir, download=False)
    except fmnist.DataError as err:
        return None, f"{err}; pass --data-dir (or set FASHION_MNIST_DIR)"
    images = data.test_images[:count].numpy()
    labels = data.test_labels[:count].numpy()
    return card.TestSet(images, labels, data.source, predict.data_key(images, labels)), ""


def _header(artifacts: Path, test: card.TestSet | None, test_note: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = (escape(f"models measured on the first {len(test.labels):,} test images of "
                   f"{test.source}") if test else html.text(f"no test set: {test_note}"))
    return (f"Built {when} from <code>{escape(str(artifacts.resolve()))}</code> by "
            f"<code>python -m reporting</code>; {data}.")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from a web server
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
