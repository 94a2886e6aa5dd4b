"""Small data sets in Fashion-MNIST's own file format (gzipped idx), for tests and scripts that
run the trainer and the exporter without the real data set."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) in the idx format the Fashion-MNIST files use, gzipped."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()))


def make_learnable_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is easy to learn: class k lights up horizontal band k, plus noise."""
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images, labels


def write_fashion_mnist(folder: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_learnable_split(n, rng)
        write_idx(folder / IDX_NAMES[(split, "images")], images)
        write_idx(folder / IDX_NAMES[(split, "labels")], labels)
    return folder
