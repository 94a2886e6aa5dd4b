"""Fashion-MNIST as uint8 tensors, from the first source that has it.

Source order (docs/DESIGN.md): an explicit folder (`--data-dir` or FASHION_MNIST_DIR) with the
four standard idx files, then the Debian package's folder, then torchvision's download into
`data/`. The whole set is 47 MB as uint8, so it lives on the training device and batches are
made by indexing: no DataLoader, no per-image PIL work.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_contract import SIDE

LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path("data")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(RuntimeError):
    """The data set cannot be found or read; the message says where we looked."""


@dataclass(frozen=True)
class FashionMNIST:
    train_images: torch.Tensor  # uint8 [60000, 1, SIDE, SIDE]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor   # uint8 [10000, 1, SIDE, SIDE]
    test_labels: torch.Tensor   # int64 [10000]
    source: str

    def to(self, device: torch.device | str) -> "FashionMNIST":
        return FashionMNIST(self.train_images.to(device), self.train_labels.to(device),
                            self.test_images.to(device), self.test_labels.to(device), self.source)


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode one idx file (gzip or plain): magic 0x0000TTDD, DD big-endian uint32 sizes, data."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # truncated or corrupt
            raise DataError(f"not a readable gzip file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError("not an idx file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    count = int(np.prod(shape))
    body = raw[4 + 4 * ndim:]
    if len(body) != count * dtype.itemsize:
        raise DataError(f"idx file holds {len(body)} data bytes, its header promises "
                        f"{count * dtype.itemsize} for shape {shape}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in FILES.items():
        path = _find(folder, stem)
        if path is None:
            raise DataError(f"{folder} has no {stem}(.gz)")
        try:
            arrays[key] = parse_idx(path.read_bytes())
        except OSError as err:
            raise DataError(f"{path}: cannot read it ({err.strerror})") from None
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} do not match labels "
                            f"{labels.shape}; expected [N, {SIDE}, {SIDE}] and [N]")
    return arrays


def _download(root: Path) -> dict[str, np.ndarray]:
    """torchvision's download: the fallback for machines with internet and no local copy."""
    from torchvision import datasets

    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = datasets.FashionMNIST(root=str(root), train=train, download=True)
        out[f"{split}_images"] = ds.data.numpy()
        out[f"{split}_labels"] = ds.targets.numpy()
    return out


def resolve_source(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder to read, or None when only a download is left. An explicit folder must work:
    one that is not there is an error, not a reason to look elsewhere."""
    for origin, explicit in (("--data-dir", data_dir),
                             ("FASHION_MNIST_DIR", os.environ.get("FASHION_MNIST_DIR"))):
        if explicit:
            if not Path(explicit).is_dir():
                what = "not a folder" if Path(explicit).exists() else "no such folder"
                raise DataError(f"{origin} {explicit}: {what}")
            return Path(explicit)
    if all(_find(DEBIAN_DIR, stem) for stem in FILES.values()):
        return DEBIAN_DIR
    return None


def load(data_dir: str | os.PathLike | None = None, download_root: Path = DOWNLOAD_ROOT,
         download: bool = True) -> FashionMNIST:
    """Fashion-MNIST as CPU tensors (move them with `.to(device)`)."""
    folder = resolve_source(data_dir)
    if folder is not None:
        arrays, source = _read_folder(folder), str(folder)
    elif download:
        try:
            arrays = _download(download_root)
        except Exception as err:  # no internet, no torchvision: say what else would have worked
            raise DataError(
                f"Fashion-MNIST not found: no --data-dir/FASHION_MNIST_DIR, nothing in "
                f"{DEBIAN_DIR} (apt-get install dataset-fashion-mnist), and torchvision's "
                f"download into {download_root}/ failed: {err}") from err
        source = f"torchvision download ({download_root})"
    else:
        raise DataError(f"Fashion-MNIST not found in FASHION_MNIST_DIR or {DEBIAN_DIR}")

    def images(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)).unsqueeze(1)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return FashionMNIST(images(arrays["train_images"]), labels(arrays["train_labels"]),
                        images(arrays["test_images"]), labels(arrays["test_labels"]), source)
