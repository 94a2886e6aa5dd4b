"""The whole report: read every architecture's sources, measure its served model, draw the
figures, render the pages and write them. Pages are written atomically (temporary file, then
rename) after every picture they show is in place."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from reporting import benchmarks, card, html, plots, sources
from trainer import data as fmnist


def build(artifacts: Path, out: Path, data_dir: Path | None, test_images: int | None,
          near_chance_images: int = card.NEAR_CHANCE_IMAGES, progress: bool = True) -> Path:
    """Write `out`/index.html and one `out`/<arch>.html per architecture; returns index.html."""
    started = time.monotonic()
    test, test_note = load_test_set(data_dir, test_images)
    plan = card.Plan(test, test_note, out, near_chance_images, progress)
    cards = [card.make(sources.read(artifacts, arch), plan)
             for arch in sources.architectures(artifacts)]
    benches, notes = benchmarks.read(artifacts)
    points = benchmarks.plot_points(benches)
    plot = None
    if points:
        plots.throughput_latency(points, out / "img" / "bench-throughput-latency.png")
        plot = "img/bench-throughput-latency.png"
    if test is None:
        notes.append(f"no confusion matrices: {test_note}")
    header = _header(artifacts, test, test_note, time.monotonic() - started)
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
    return card.TestSet.of(data.test_images[:count].numpy(), data.test_labels[:count].numpy(),
                           data.source, chosen=count is not None), ""


def _header(artifacts: Path, test: card.TestSet | None, test_note: str, seconds: float) -> str:
    """When the report was finished (the pages are written right after), how long it took, from
    what, and on which test images."""
    end = datetime.now(timezone.utc)
    when = (f'<time datetime="{end.isoformat(timespec="seconds")}">'
            f'{end.strftime("%Y-%m-%d %H:%M:%S UTC")}</time>')
    if test is None:
        data = html.text(f"no test set: {test_note}")
    elif test.chosen:
        data = escape(f"every model run on the first {len(test.labels):,} test images of "
                      f"{test.source}")
    else:
        data = escape(f"models run on up to {len(test.labels):,} test images of {test.source}, "
                      f"each card says how many")
    return (f"Built {when} in {html.duration(seconds)} from "
            f"<code>{escape(str(artifacts.resolve()))}</code> by "
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
