"""Fixtures shared by every part's tests: small Fashion-MNIST-format data written as real idx files."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import REPO  # noqa: F401 - the tests' name for the repository root
from harness.data import IDX_NAMES, write_fashion_mnist, write_idx  # noqa: F401 - for the tests


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A small synthetic Fashion-MNIST in the real file format (512 train, 256 test images)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))
