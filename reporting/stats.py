"""What the predictions say about a model, as pure functions of (truth, predictions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pair:
    """`count` test images of class `truth` that the model called `predicted`."""

    truth: int
    predicted: int
    count: int
    examples: tuple[int, ...]  # test-set indices of the first few of them


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """int64 [classes, classes]: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    return float(np.trace(matrix) / max(matrix.sum(), 1))


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Share of each true class predicted right (recall); NaN for a class with no test image."""
    totals = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def most_confused(truth: np.ndarray, predicted: np.ndarray, matrix: np.ndarray, pairs: int,
                  examples: int) -> list[Pair]:
    """The `pairs` largest off-diagonal cells, largest first, each with up to `examples` images."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:pairs]
    out = []
    for flat in order:
        t, p = np.unravel_index(flat, off.shape)
        if off[t, p] == 0:
            break
        where = np.flatnonzero((truth == t) & (predicted == p))[:examples]
        out.append(Pair(int(t), int(p), int(off[t, p]), tuple(int(i) for i in where)))
    return out


def samples(truth: np.ndarray, predicted: np.ndarray, count: int) -> tuple[list[int], list[int]]:
    """Up to `count` indices of images predicted right and `count` predicted wrong, in test-set
    order: the first image of each true class before a second of any, so a few examples show
    several classes rather than the first few T-shirts."""
    hits = truth == predicted
    return (_spread(np.flatnonzero(hits), truth, count),
            _spread(np.flatnonzero(~hits), truth, count))


def _spread(where: np.ndarray, truth: np.ndarray, count: int) -> list[int]:
    _, first = np.unique(truth[where], return_index=True)
    chosen = [int(i) for i in where[np.sort(first)][:count]]
    taken = set(chosen)
    chosen += [int(i) for i in where[:2 * count] if int(i) not in taken][:count - len(chosen)]
    return sorted(chosen)
