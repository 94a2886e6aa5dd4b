"""Fixtures for the server's and the client's tests: real exported models from a few training steps.

tests/server/conftest.py and tests/client/conftest.py import these names. The models are built
once per test session (a module-level cache, since each conftest gets its own copy of a fixture):
`python -m trainer` for a few steps on the synthetic idx files of `fmnist_dir`, then
`python -m exporter`, both as subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHS = ("lenet_bn", "lenet")  # the two cheap ones: a few seconds of CPU each
SAMPLES = REPO / "samples"
_CACHE: dict[str, Path] = {}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_models(artifacts: Path, data_dir: Path) -> Path:
    """Train ARCHS for a few steps and export them; returns artifacts/models."""
    run_cli("-m", "trainer", "--models", *ARCHS, "--epochs", "1", "--limit-train", "256",
            "--data-dir", str(data_dir), "--artifacts", str(artifacts), "--device", "cpu",
            "--no-progress")
    run_cli("-m", "exporter", "--models", *ARCHS, "--artifacts", str(artifacts),
            "--data-dir", str(data_dir), "--no-progress")
    return artifacts / "models"


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
