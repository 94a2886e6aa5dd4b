"""Everything one architecture's card shows: its sources, and what running its served model on the
test set measured, with the pictures drawn. html.py only lays this out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import model_contract as contract
from reporting import plots, predict, stats
from reporting.sources import Sources

CONFUSED_PAIRS = 3
EXAMPLES_PER_PAIR = 6


@dataclass(frozen=True)
class TestSet:
    """The first N test images the report measures every model on (uint8 [N, 1, 28, 28])."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    key: str  # predict.data_key of images and labels


@dataclass(frozen=True)
class Evaluation:
    """The served model.onnx, run by the report on the test set."""

    images: int
    accuracy: float
    matrix: np.ndarray
    per_class: np.ndarray
    pairs: list[stats.Pair]
    variants: dict[str, float | str]  # variant -> accuracy on the same images, or why none


@dataclass(frozen=True)
class Card:
    sources: Sources
    labels: list[str]
    evaluation: Evaluation | None
    evaluation_note: str
    images: dict[str, str] = field(default_factory=dict)  # "curves"/"confusion"/"pairs" -> src

    @property
    def arch(self) -> str:
        return self.sources.arch


def make(sources: Sources, test: TestSet | None, test_note: str, out: Path,
         progress: bool) -> Card:
    """Measure the served model (when there is one and a test set) and draw the card's figures
    into out/img/; image sources in the card are relative to out/."""
    arch, export = sources.arch, sources.export
    labels = _labels(export)
    images: dict[str, str] = {}
    if sources.run is not None:
        images["curves"] = _draw(out, f"{arch}-curves.png", plots.curves, sources.run.records,
                                 f"{arch}: {sources.run.path.name}")
    if export is None:
        return Card(sources, labels, None, sources.export_note, images)
    if test is None:
        return Card(sources, labels, None, test_note, images)
    try:
        evaluation = evaluate(export.model, export.variants, test, out / ".cache", progress)
    except Exception as err:  # onnxruntime's errors for a broken file are many kinds; say which
        return Card(sources, labels, None, f"running {export.model} failed: "
                    f"{type(err).__name__}: {err}", images)
    images["confusion"] = _draw(
        out, f"{arch}-confusion.png", plots.confusion, evaluation.matrix, labels,
        f"{arch} v{export.version} ({contract.MODEL_FILE}, onnxruntime CPU), "
        f"{evaluation.images:,} test images")
    if evaluation.pairs:
        images["pairs"] = _draw(out, f"{arch}-confused.png", plots.pair_examples, test.images,
                                evaluation.pairs, labels)
    return Card(sources, labels, evaluation, "", images)


def evaluate(model: Path, variants: dict[str, Path], test: TestSet, cache: Path,
             progress: bool) -> Evaluation:
    top1 = predict.predictions(model, test.images, test.key, cache, progress)
    matrix = stats.confusion(test.labels, top1, contract.NUM_CLASSES)
    pairs = stats.most_confused(test.labels, top1, matrix, CONFUSED_PAIRS, EXAMPLES_PER_PAIR)
    measured = {name: _variant_accuracy(path, test, cache, progress)
                for name, path in variants.items()}
    return Evaluation(len(test.labels), stats.accuracy(matrix), matrix,
                      stats.per_class_accuracy(matrix), pairs, measured)


def _variant_accuracy(path: Path, test: TestSet, cache: Path, progress: bool) -> float | str:
    """A variant that does not run is reported as such; the served model's card still stands."""
    try:
        top1 = predict.predictions(path, test.images, test.key, cache, progress)
    except Exception as err:
        return f"failed to run: {type(err).__name__}: {err}"
    return float((top1 == test.labels).mean())


def _labels(export) -> list[str]:
    """Class names as the model itself declares them; class indices when it cannot say."""
    try:
        return list(json.loads(export.metadata[contract.LABELS]))
    except (AttributeError, KeyError, ValueError):
        return [str(i) for i in range(contract.NUM_CLASSES)]


def _draw(out: Path, name: str, plot, *args) -> str:
    plot(*args, out / "img" / name)
    return f"img/{name}"
