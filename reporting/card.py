"""Everything one architecture's card shows: its sources, and what running its served model on the
test set measured, with the pictures drawn. html.py only lays this out.

How many test images a model is run on: all the report has (`--test-images`, else the whole test
set) when asked for explicitly; otherwise as many as the exporter measured it on (its
`fmnist.test_images`), so the report spends no more than the export did and its figure can be
compared with the metadata's. A model near chance runs on at most `--near-chance-images`: its
confusion matrix says the same on 500 images as on 10,000. Each card says which rule applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import model_contract as contract
from reporting import plots, predict, stats
from reporting.sources import Export, Sources

CONFUSED_PAIRS = 3
EXAMPLES_PER_PAIR = 6
SAMPLES_EACH = 4  # sample predictions per card: this many right and this many wrong
CHANCE = 1 / contract.NUM_CLASSES
NEAR_CHANCE = contract.NEAR_CHANCE  # twice CHANCE: a model under it has learnt next to nothing
NEAR_CHANCE_IMAGES = 500


@dataclass(frozen=True)
class TestSet:
    """The first N test images the report can measure models on (uint8 [N, 1, 28, 28])."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    key: str  # predict.data_key of images and labels
    chosen: bool = False  # True: N is --test-images, which every model is run on

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray, source: str,
           chosen: bool = False) -> "TestSet":
        return cls(images, labels, source, predict.data_key(images, labels), chosen)

    def first(self, count: int) -> "TestSet":
        if count >= len(self.labels):
            return self
        return TestSet.of(self.images[:count], self.labels[:count], self.source, self.chosen)


@dataclass(frozen=True)
class Plan:
    """What the report measures every model with, and where it puts what it draws."""

    test: TestSet | None
    test_note: str  # why there is no test set
    out: Path  # the report folder: pictures go to out/img, cached predictions to out/.cache
    near_chance_images: int = NEAR_CHANCE_IMAGES
    progress: bool = True


@dataclass(frozen=True)
class Sample:
    """One test image with the served model's answer, for the card's sample predictions."""

    index: int  # in the test set
    truth: int
    predicted: int


@dataclass(frozen=True)
class Evaluation:
    """The served model.onnx, run by the report on the first `images` test images."""

    images: int
    accuracy: float
    matrix: np.ndarray
    per_class: np.ndarray
    pairs: list[stats.Pair]
    variants: dict[str, float | str]  # variant -> accuracy on the same images, or why none
    samples: tuple[Sample, ...] = ()
    subset: str = ""  # why fewer images than the report has, in words; "" when all of them


@dataclass(frozen=True)
class Card:
    sources: Sources
    labels: list[str]
    evaluation: Evaluation | None
    evaluation_note: str
    images: dict[str, str] = field(default_factory=dict)  # "curves", "sample-12", ... -> src

    @property
    def arch(self) -> str:
        return self.sources.arch

    @property
    def accuracy(self) -> float | None:
        """The best-founded test accuracy the card has: this report's run of the served model,
        else the exporter's (metadata), else the trainer's best epoch."""
        export, run = self.sources.export, self.sources.run
        if self.evaluation is not None:
            return self.evaluation.accuracy
        if export is not None and export.metadata is not None:
            return export.metadata.test_accuracy
        return run.best["test_acc"] if run else None

    @property
    def near_chance(self) -> bool:
        return self.accuracy is not None and self.accuracy < NEAR_CHANCE


def make(sources: Sources, plan: Plan) -> Card:
    """Measure the served model (when there is one and a test set) and draw the card's figures
    into out/img/; image sources in the card are relative to out/."""
    arch, export = sources.arch, sources.export
    labels = _labels(export)
    images: dict[str, str] = {}
    if sources.run is not None:
        run = sources.run
        images["curves"] = _draw(plan.out, f"{arch}-curves.png", plots.curves, run.records,
                                 f"{arch}: {run.path.name}, "
                                 f"{run.records[-1]['epoch_float']:g} epochs trained")
    if export is None:
        return Card(sources, labels, None, sources.export_note, images)
    if plan.test is None:
        return Card(sources, labels, None, plan.test_note, images)
    count, subset = images_to_run(export, plan)
    test = plan.test.first(count)
    try:
        evaluation = evaluate(export, test, subset, plan)
    except Exception as err:  # onnxruntime's errors for a broken file are many kinds; say which
        return Card(sources, labels, None, f"running {export.model} failed: "
                    f"{type(err).__name__}: {err}", images)
    images.update(_figures(export, evaluation, test, labels, plan.out))
    return Card(sources, labels, evaluation, "", images)


def images_to_run(export: Export, plan: Plan) -> tuple[int, str]:
    """How many of the first test images to run `export` on, and why, when not all the report
    has (see the module's docstring)."""
    test, meta = plan.test, export.metadata
    count, why = len(test.labels), ""
    if meta is None:
        return count, why
    if not test.chosen and 0 < meta.test_images < count:
        count, why = meta.test_images, (f"as many as the exporter measured it on; "
                                        f"`--test-images {len(test.labels)}` runs all")
    if meta.test_accuracy < NEAR_CHANCE and plan.near_chance_images < count:
        count, why = plan.near_chance_images, (
            f"its exported accuracy, {meta.test_accuracy:.4f}, is near chance, and such a "
            f"model's confusion matrix says no more on all of them; `--near-chance-images` sets "
            f"how many")
    return count, why


def evaluate(export: Export, test: TestSet, subset: str, plan: Plan) -> Evaluation:
    cache = plan.out / ".cache"
    top1 = predict.predictions(export.model, test.images, test.key, cache, plan.progress)
    matrix = stats.confusion(test.labels, top1, contract.NUM_CLASSES)
    pairs = stats.most_confused(test.labels, top1, matrix, CONFUSED_PAIRS, EXAMPLES_PER_PAIR)
    measured = {name: _variant_accuracy(path, test, cache, plan.progress)
                for name, path in export.variants.items()}
    right, wrong = stats.samples(test.labels, top1, SAMPLES_EACH)
    samples = tuple(Sample(i, int(test.labels[i]), int(top1[i])) for i in right + wrong)
    return Evaluation(len(test.labels), stats.accuracy(matrix), matrix,
                      stats.per_class_accuracy(matrix), pairs, measured, samples, subset)


def _variant_accuracy(path: Path, test: TestSet, cache: Path, progress: bool) -> float | str:
    """A variant that does not run is reported as such; the served model's card still stands."""
    try:
        top1 = predict.predictions(path, test.images, test.key, cache, progress)
    except Exception as err:
        return f"failed to run: {type(err).__name__}: {err}"
    return float((top1 == test.labels).mean())


def _figures(export: Export, evaluation: Evaluation, test: TestSet, labels: list[str],
             out: Path) -> dict[str, str]:
    arch = export.arch
    images = {"confusion": _draw(
        out, f"{arch}-confusion.png", plots.confusion, evaluation.matrix, labels,
        f"{arch} v{export.version} ({contract.MODEL_FILE}, onnxruntime CPU), "
        f"{evaluation.images:,} test images")}
    if evaluation.pairs:
        images["pairs"] = _draw(out, f"{arch}-confused.png", plots.pair_examples, test.images,
                                evaluation.pairs, labels)
    for sample in evaluation.samples:
        images[f"sample-{sample.index}"] = _draw(out, f"{arch}-sample-{sample.index}.png",
                                                 plots.thumbnail, test.images[sample.index])
    return images


def _labels(export: Export | None) -> list[str]:
    """Class names as the model itself declares them; class indices when it cannot say."""
    if export is None or export.metadata is None:
        return [str(i) for i in range(contract.NUM_CLASSES)]
    return list(export.metadata.labels)


def _draw(out: Path, name: str, plot, *args) -> str:
    plot(*args, out / "img" / name)
    return f"img/{name}"
