"""Reporting tests: a report built by `python -m reporting`, as a user runs it, from real
artifacts (tests/serving_fixtures.py: lenet_bn and lenet trained for a few steps with the trainer's
CLI and exported with the exporter's), a benchmark result written through bench/results.py, and a
model variant file."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench import results
from tests.serving_fixtures import models_dir, run_cli  # noqa: F401 - fixture

VARIANT = "copy"  # a model.<variant>.onnx beside lenet_bn's model.onnx: the same file, renamed
BENCH_ROWS = [
    {"model": "lenet_bn", "mode": "in-process", "batch": 1, "images_per_s": 25000.0,
     "p50_ms": 0.04, "p99_ms": 0.09},
    {"model": "lenet_bn", "mode": "server", "batch": 32, "images_per_s": 6400.5,
     "p50_ms": 4.9, "p99_ms": 7.25},
]


@pytest.fixture(scope="module")
def artifacts(models_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A private copy of the shared fixture's artifacts (the report writes into it), with a bench
    result beside them."""
    root = tmp_path_factory.mktemp("report-artifacts") / "artifacts"
    shutil.copytree(models_dir.parent, root)
    results.write("serve", {"rows": BENCH_ROWS, "seconds": 1.0}, root)
    version = root / "models" / "lenet_bn" / "1"
    shutil.copy(version / "model.onnx", version / f"model.{VARIANT}.onnx")
    return root


@pytest.fixture(scope="module")
def report(artifacts, fmnist_dir) -> Path:
    """artifacts/report/, built by the real command line."""
    proc = run_cli("-m", "reporting", "--artifacts", str(artifacts), "--data-dir", str(fmnist_dir),
                   "--no-progress")
    assert "report:" in proc.stdout
    return artifacts / "report"


class Page(HTMLParser):
    """The parts of a page the tests look at: image sources, links, and the text of each table
    row (cells joined by ' | ')."""

    def __init__(self, path: Path):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: list[str] = []
        self._cells: list[str] | None = None
        self._text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "tr":
            self._cells = []
        elif tag in ("td", "th") and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._cells is not None:
            self.rows.append(" | ".join(" ".join(c.split()) for c in self._cells))
            self._cells = None

    def handle_data(self, data):
        self._text.append(data)
        if self._cells:
            self._cells[-1] += data

    def row(self, first_cell: str) -> str:
        """The table row whose first cell is `first_cell`."""
        found = [r for r in self.rows if r.split(" | ")[0] == first_cell]
        assert found, f"no table row starts with {first_cell!r}; rows: {self.rows}"
        return found[0]
