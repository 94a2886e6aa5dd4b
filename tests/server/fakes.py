"""Small fake runners for what real models cannot show cheaply: slowness, failures, and a CUDA
provider (a mock: this machine has no GPU)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import model_contract
from execution_providers import CUDA, cuda_driver_present
from server.models.runner import RunOutput
from server.models.loading import LoadedModel
from server.models.spec import parse_metadata

CUDA_USABLE = CUDA in ort.get_available_providers() and cuda_driver_present()
needs_no_gpu = pytest.mark.skipif(CUDA_USABLE, reason="a CUDA provider and an NVIDIA driver are "
                                  "here, so a real session comes up on CUDA: this test shows the "
                                  "path without one")

LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def fake_probabilities(images: np.ndarray) -> np.ndarray:
    """What FakeRunner answers: class (mean pixel value % 10) at 0.91, the rest 0.01 each."""
    probabilities = np.full((len(images), 10), 0.01, np.float32)
    classes = images.reshape(len(images), -1).mean(axis=1).astype(int) % 10
    probabilities[np.arange(len(images)), classes] = 0.91
    return probabilities


def metadata(name: str, accuracy: float = 0.5) -> dict[str, str]:
    """A fake model file's metadata, with a probe of what FakeRunner answers (so it verifies)."""
    probe = np.arange(4 * 784, dtype=np.uint32).astype(np.uint8).reshape(4, 1, 28, 28)
    return {"fmnist.arch": name, "fmnist.labels": json.dumps(LABELS), "fmnist.input_side": "28",
            "fmnist.test_accuracy": str(accuracy), "fmnist.bn_folded": "{}",
            "fmnist.bn_remaining": "{}", "fmnist.source_checkpoint_sha256": "0" * 64,
            "fmnist.exported_at": "2026-01-01T00:00:00Z", "fmnist.torch_version": "fake",
            "fmnist.probe": model_contract.encode_probe(probe, fake_probabilities(probe))}


class FakeRunner:
    """Answers class (mean pixel value % 10) with probability 0.91, the rest 0.01 each."""

    def __init__(self, name: str = "fake", provider: str = "CPUExecutionProvider",
                 delay: float = 0.0, error: Exception | None = None, accuracy: float = 0.5,
                 delay_per_image: float = 0.0, gate: threading.Event | None = None):
        self.provider = provider
        self.metadata = metadata(name, accuracy)
        self.settings = "fake"
        self.delay = delay
        self.delay_per_image = delay_per_image
        self.error = error
        self.runs = 0
        self.sizes: list[int] = []  # batch size of every run (warm-ups excluded)
        self.began: list[float] = []  # time.monotonic() when each run began
        self.warmups = 0
        self.warmed: list[int] = []  # batch size of every warm-up
        self.started = threading.Event()  # set when a run begins (after warm-up)
        self.gate = gate  # when given, each run waits for it once begun: the test ends the run
        self.closed = False

    def run(self, images: np.ndarray) -> RunOutput:
        assert images.dtype == np.uint8 and images.shape[1:] == (1, 28, 28)
        self.began.append(time.monotonic())
        self.runs += 1
        self.sizes.append(len(images))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        time.sleep(self.delay + self.delay_per_image * len(images))
        if self.error is not None:
            raise self.error
        probabilities = fake_probabilities(images)
        return RunOutput(probabilities=probabilities, logits=np.log(probabilities))

    def warmup(self, batch_size: int = 1) -> None:
        """Takes as long as a run (so the batcher's cost model learns it) but is not counted."""
        self.warmups += 1
        self.warmed.append(batch_size)
        time.sleep(self.delay + self.delay_per_image * batch_size)

    def close(self) -> None:
        self.closed = True


def fake_model(name: str = "fake", version: int = 1, **kw) -> LoadedModel:
    runner = FakeRunner(name, **kw)
    spec = parse_metadata(name, version, Path(f"/fake/{name}/{version}/model.onnx"),
                          runner.metadata)
    return LoadedModel(spec=spec, runner=runner)
