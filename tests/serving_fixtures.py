"""Fixtures for the server's and the client's tests: real models from a few training steps, and a
real server on a loopback port.

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


def exporter_cli_exists() -> bool:
    return subprocess.run([sys.executable, "-m", "exporter", "--help"], cwd=REPO,
                          capture_output=True).returncode == 0


def build_models(artifacts: Path, data_dir: Path) -> Path:
    """Train ARCHS for a few steps and export them; returns artifacts/models."""
    run_cli("-m", "trainer", "--models", *ARCHS, "--epochs", "1", "--limit-train", "256",
            "--data-dir", str(data_dir), "--artifacts", str(artifacts), "--device", "cpu",
            "--no-progress")
    # ---- SWITCH: the real exporter CLI when it exists; the stand-in below until then. ----------
    if exporter_cli_exists():
        run_cli("-m", "exporter", "--models", *ARCHS, "--artifacts", str(artifacts),
                "--data-dir", str(data_dir))
    else:
        stand_in_export(artifacts, ARCHS)
    return artifacts / "models"


def stand_in_export(artifacts: Path, archs) -> None:
    """TEMPORARY stand-in for `python -m exporter` (delete once the exporter CLI exists): best.pt ->
    models/<arch>/1/model.onnx with preprocessing inside and the fmnist.* metadata. No BN folding
    and no parity check; the accuracy written is the checkpoint's."""
    import datetime

    import onnx
    import torch
    from torch import nn

    from trainer import models
    from trainer.data import LABELS
    from trainer.preprocess import Preprocess

    class Wrapped(nn.Module):
        def __init__(self, pre, net):
            super().__init__()
            self.pre, self.net = pre, net

        def forward(self, image):
            logits = self.net(self.pre(image))
            return logits, torch.softmax(logits, dim=1)

    for arch in archs:
        ckpt = torch.load(artifacts / "checkpoints" / arch / "best.pt", weights_only=True,
                          map_location="cpu")
        net = models.build(arch)
        net.load_state_dict(ckpt["model"])
        side = models.ARCHITECTURES[arch].input_side
        wrapped = Wrapped(Preprocess(side), net).eval()
        out = artifacts / "models" / arch / "1" / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(wrapped, (torch.zeros(2, 1, 28, 28, dtype=torch.uint8),), str(out),
                          input_names=["image"], output_names=["logits", "probabilities"],
                          dynamic_axes={n: {0: "batch"} for n in ("image", "logits", "probabilities")},
                          dynamo=False, opset_version=17)
        proto = onnx.load(str(out))
        meta = {"fmnist.arch": arch, "fmnist.labels": json.dumps(list(LABELS)),
                "fmnist.input_side": str(side),
                "fmnist.test_accuracy": str(float(ckpt["test_accuracy"])),
                "fmnist.bn_folded": "0", "fmnist.bn_remaining": "0",
                "fmnist.source_checkpoint_sha256": "0" * 64,
                "fmnist.exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "fmnist.torch_version": torch.__version__}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(out))


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
