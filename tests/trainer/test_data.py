"""Fashion-MNIST loading from idx files, in the order docs/DESIGN.md gives."""

import gzip

import numpy as np
import pytest
import torch

from tests.conftest import IDX_NAMES, write_idx
from trainer import data


def test_reads_idx_files_the_test_wrote(fmnist_dir):
    ds = data.load(fmnist_dir, download=False)
    assert ds.source == str(fmnist_dir)
    assert ds.train_images.shape == (512, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (256, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and int(ds.train_labels.max()) <= 9
    raw = gzip.decompress((fmnist_dir / IDX_NAMES[("test", "images")]).read_bytes())
    first = np.frombuffer(raw[16:16 + 784], dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(ds.test_images[0, 0].numpy(), first)


def test_environment_variable_names_the_folder(fmnist_dir, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fmnist_dir))
    assert data.load(download=False).source == str(fmnist_dir)


def test_uncompressed_files_are_read_too(tmp_path):
    rng = np.random.default_rng(1)
    for (split, kind), name in IDX_NAMES.items():
        n = 20 if split == "train" else 10
        arr = rng.integers(0, 256, (n, 28, 28)) if kind == "images" else rng.integers(0, 10, n)
        write_idx(tmp_path / "x.gz", arr.astype(np.uint8))
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress((tmp_path / "x.gz").read_bytes()))
    ds = data.load(tmp_path, download=False)
    assert len(ds.train_labels) == 20 and len(ds.test_labels) == 10


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="has no train-images-idx3-ubyte"):
        data.load(tmp_path, download=False)


def test_corrupt_file_names_the_file(fmnist_dir, tmp_path):
    for name in IDX_NAMES.values():
        (tmp_path / name).write_bytes((fmnist_dir / name).read_bytes())
    bad = tmp_path / IDX_NAMES[("train", "labels")]
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x01\x00" + b"\x01" * 10))
    with pytest.raises(data.DataError, match="train-labels.*header promises 256"):
        data.load(tmp_path, download=False)


def test_parse_idx_rejects_non_idx_bytes():
    with pytest.raises(data.DataError, match="magic"):
        data.parse_idx(b"\x89PNG\r\n\x1a\n")


@pytest.mark.skipif(not (data.DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_folder_is_the_default(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    ds = data.load(download=False)
    assert ds.source == str(data.DEBIAN_DIR)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert len(data.LABELS) == 10
