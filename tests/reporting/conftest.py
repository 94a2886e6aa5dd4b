"""Reporting tests: a report built by `python -m reporting`, as a user runs it, from real
artifacts (tests/serving_fixtures.py: lenet_bn and lenet trained for a few steps with the trainer's
CLI and exported with the exporter's), a benchmark result written through bench/results.py, and a
model variant file; and `trained`, artifacts with one model that learnt and two stopped after one
training step, as the demo's time budget stops the big ones."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench import results
from tests.serving_fixtures import models_dir, run_cli  # noqa: F401 - fixture

TRAINED_TEST_IMAGES = 64  # what the exporter measures the `trained` models on
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


@pytest.fixture(scope="session")
def trained(fmnist_dir, tmp_path_factory) -> Path:
    """An artifacts folder made with the trainer's and the exporter's CLIs: lenet_bn trained for a
    whole epoch (it learns the synthetic classes: accuracy far above chance); lenet and densenet
    stopped by a zero time budget after one step of 2 images, i.e. 1/256 of an epoch (near
    chance, like the demo's 224-px models); all three exported on the first 64 test images.
    densenet's pre-activation BatchNorms are the ones the exporter cannot fold."""
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    common = ("--data-dir", str(fmnist_dir), "--artifacts", str(root), "--no-progress")
    run_cli("-m", "trainer", "--models", "lenet_bn", "--epochs", "1", "--batch-size", "16",
            "--limit-train", "512", "--device", "cpu", *common)
    run_cli("-m", "trainer", "--models", "lenet", "densenet", "--time-budget", "0",
            "--batch-size", "2", "--limit-train", "512", "--device", "cpu", *common)
    run_cli("-m", "exporter", "--models", "lenet_bn", "lenet", "densenet", "--test-images",
            str(TRAINED_TEST_IMAGES), *common)
    return root


@pytest.fixture(scope="module")
def report(artifacts, fmnist_dir) -> Path:
    """artifacts/report/, built by the real command line."""
    proc = run_cli("-m", "reporting", "--artifacts", str(artifacts), "--data-dir", str(fmnist_dir),
                   "--no-progress")
    assert "report:" in proc.stdout
    return artifacts / "report"


class Page(HTMLParser):
    """The parts of a page the tests look at: image sources (and alt texts), links, the text of
    each table row (cells joined by ' | '), and the badges: a badge's words are kept out of its
    cell, in `badges` (row text -> badge words) and in the page's text."""

    def __init__(self, path: Path):
        super().__init__()
        self.images: list[str] = []
        self.alts: dict[str, str] = {}
        self.links: list[str] = []
        self.rows: list[str] = []
        self.badges: dict[str, list[str]] = {}
        self.times: list[str] = []  # datetime attributes of <time> elements
        self._cells: list[str] | None = None
        self._row_badges: list[str] = []
        self._in_badge = False
        self._text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
            self.alts[attrs["src"]] = attrs.get("alt", "")
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "time":
            self.times.append(attrs["datetime"])
        elif tag == "span" and attrs.get("class") == "badge":
            self._in_badge = True
        elif tag == "tr":
            self._cells, self._row_badges = [], []
        elif tag in ("td", "th") and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_badge = False
        elif tag == "tr" and self._cells is not None:
            row = " | ".join(" ".join(c.split()) for c in self._cells)
            self.rows.append(row)
            if self._row_badges:
                self.badges[row] = self._row_badges
            self._cells = None

    def handle_data(self, data):
        self._text.append(data)
        if self._in_badge:
            self._row_badges.append(data)
        elif self._cells:
            self._cells[-1] += data

    def row(self, first_cell: str) -> str:
        """The table row whose first cell is `first_cell`."""
        found = [r for r in self.rows if r.split(" | ")[0] == first_cell]
        assert found, f"no table row starts with {first_cell!r}; rows: {self.rows}"
        return found[0]
