"""Fixtures for the server's and the client's tests: real exported models from a few training steps.

tests/server/conftest.py and tests/client/conftest.py import these names. The models are built
once per test session (a module-level cache, since each conftest gets its own copy of a fixture):
`python -m trainer` for a few steps on the synthetic idx files of `fmnist_dir`, then
`python -m exporter`, both as subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import REPO
from harness.models import ARCHS, build_models, run_cli  # noqa: F401 - for the tests

SAMPLES = REPO / "samples"
_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def models_dir(fmnist_dir, tmp_path_factory) -> Path:
    """artifacts/models with ARCHS, each at version 1, exported from a few training steps."""
    if "models" not in _CACHE:
        _CACHE["models"] = build_models(tmp_path_factory.mktemp("serving-artifacts"), fmnist_dir)
    return _CACHE["models"]


@pytest.fixture(scope="session")
def samples() -> dict[str, dict]:
    """samples/index.json: file name -> {class_id, label, test_index}."""
    return json.loads((SAMPLES / "index.json").read_text())
