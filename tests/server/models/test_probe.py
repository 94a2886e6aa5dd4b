"""Verified where served: a model's `fmnist.probe` (the exporter's images and probabilities) is run
on the provider the server really uses, and a version that answers differently is refused.

The models here are small real ONNX files built with onnx.helper (a linear layer and a softmax
over the 784 pixels, with the servable signature), so these tests need neither torch nor the
trainer's fixture; `reference` computes what the file answers, as the exporter would measure it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_contract as mc
from execution_providers import CUDA
from server.models.providers import ProviderPolicy
from server.models.runner import OnnxRunner
from server.models.loading import Loader, default_runner_factory
from server.models.spec import Refusal
from tests.server.fakes import metadata

RNG = np.random.default_rng(0)
WEIGHT = (RNG.standard_normal((784, 10)) * 1e-4).astype(np.float32)
BIAS = (RNG.standard_normal(10) * 0.1).astype(np.float32)
IMAGES = RNG.integers(0, 256, (mc.PROBE_IMAGES, 1, 28, 28), dtype=np.uint8)


def reference(images: np.ndarray) -> np.ndarray:
    """The probabilities the file computes, in float64 then rounded, as the exporter's run."""
    logits = images.reshape(len(images), -1).astype(np.float64) @ WEIGHT + BIAS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def tiny_model(name: str, probe: str | None) -> onnx.ModelProto:
    """uint8 [N, 1, 28, 28] -> logits, probabilities [N, 10], with fmnist.* metadata and `probe`."""
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    inits = [numpy_helper.from_array(np.array([-1, 784], np.int64), "shape"),
             numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10]) for out in mc.OUTPUTS],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    props = ({k: v for k, v in metadata(name).items() if k != mc.PROBE}
             | ({} if probe is None else {mc.PROBE: probe}))
    helper.set_model_props(model, props)
    return model


def write(root: Path, name: str, version: int, probe: str | None) -> Path:
    path = root / name / str(version) / mc.MODEL_FILE
    path.parent.mkdir(parents=True)
    onnx.save(tiny_model(name, probe), str(path))
    return path


GOOD = mc.encode_probe(IMAGES, reference(IMAGES))
TAMPERED_PROBABILITIES = reference(IMAGES)
TAMPERED_PROBABILITIES[3, 7] += 0.01
TAMPERED = mc.encode_probe(IMAGES, TAMPERED_PROBABILITIES)


def load(root: Path, caplog, runner_factory=default_runner_factory,
         allow_unverified: bool = False) -> tuple[list, list[Refusal]]:
    refused: list[Refusal] = []
    with caplog.at_level(logging.INFO):
        loaded = Loader(ProviderPolicy("cpu"), runner_factory, allow_unverified).load_all(
            root, refused=refused)
    return loaded, refused


def test_the_tiny_model_answers_what_reference_says(tmp_path):
    """The premise of the other tests: the correct probe is within tolerance, by a wide margin."""
    runner = OnnxRunner(write(tmp_path, "m", 1, None), ["CPUExecutionProvider"])
    served = runner.run(IMAGES).probabilities
    assert np.abs(served - reference(IMAGES)).max() < 1e-5
    assert served.max() - served.min() > 0.05  # not a flat answer that any probe would match


def test_a_correct_probe_is_served_with_its_measured_difference(tmp_path, caplog):
    write(tmp_path, "m", 1, GOOD)
    loaded, refused = load(tmp_path, caplog)
    assert refused == []
    [model] = loaded
    assert model.spec.probe_max_abs_diff is not None and model.spec.probe_max_abs_diff < 1e-5
    assert f"probe max|Δ|={model.spec.probe_max_abs_diff:.3g}" in caplog.text


def test_a_tampered_probe_is_refused_with_the_measured_difference(tmp_path, caplog):
    write(tmp_path, "m", 1, TAMPERED)
    loaded, refused = load(tmp_path, caplog)
    assert loaded == []
    [refusal] = refused
    assert (refusal.name, refusal.version) == ("m", 1)
    assert "max |Δ| 0.01" in refusal.reason and "CPUExecutionProvider" in refusal.reason
    assert "skipping model m v1" in caplog.text and "max |Δ| 0.01" in caplog.text


def test_a_refused_newest_version_falls_back_to_a_verified_older_one(tmp_path, caplog):
    write(tmp_path, "m", 1, GOOD)
    write(tmp_path, "m", 2, TAMPERED)
    loaded, refused = load(tmp_path, caplog)
    assert [(m.spec.version, m.spec.probe_max_abs_diff < 1e-5) for m in loaded] == [(1, True)]
    assert [(r.name, r.version) for r in refused] == [("m", 2)]
    assert "serving m v1 instead of v2" in caplog.text


def test_without_a_probe_it_is_refused(tmp_path, caplog):
    write(tmp_path, "m", 1, None)
    loaded, refused = load(tmp_path, caplog)
    assert loaded == [] and [(r.name, r.version) for r in refused] == [("m", 1)]
    assert "no fmnist.probe" in refused[0].reason and "--allow-unverified" in refused[0].reason


def test_without_a_probe_it_is_served_when_allowed_and_says_it_was_not_verified(tmp_path, caplog):
    write(tmp_path, "m", 1, None)
    loaded, refused = load(tmp_path, caplog, allow_unverified=True)
    assert [m.spec.probe_max_abs_diff for m in loaded] == [None] and refused == []
    assert "loaded model m v1" in caplog.text and "NOT verified" in caplog.text
    assert "probe max" not in caplog.text


def nan_probe() -> str:
    probabilities = reference(IMAGES)
    probabilities[0, 0] = np.nan
    return mc.encode_probe(IMAGES, probabilities)


@pytest.mark.parametrize("probe,reason", [
    ("not json", "malformed probe"),
    ('{"count": 2, "images": "", "probabilities": ""}', "malformed probe"),
    ("[" * 100_000, "malformed probe"),
    (nan_probe(), "max |Δ| nan"),
], ids=["not-json", "count-mismatch", "nested", "nan"])
def test_a_malformed_probe_is_a_refusal(tmp_path, caplog, probe, reason):
    write(tmp_path, "m", 1, probe)
    loaded, refused = load(tmp_path, caplog)
    assert loaded == [] and len(refused) == 1 and reason in refused[0].reason


class DriftingRunner:
    """MOCK of a CUDA session: the real tiny model's answers, off by `drift` (a provider whose
    kernels compute something else). The probe must be checked on this runner's own answers."""

    def __init__(self, path: Path, drift: float):
        self._real = OnnxRunner(path, ["CPUExecutionProvider"])
        self.provider, self.metadata, self.drift = CUDA, self._real.metadata, drift
        self.settings = "mock"

    def run(self, images):
        out = self._real.run(images)
        return type(out)(probabilities=out.probabilities + self.drift, logits=out.logits)

    def warmup(self, batch_size: int = 1):
        self._real.warmup(batch_size)

    def close(self):
        self._real.close()


@pytest.mark.parametrize("drift,served", [(mc.PROBE_TOLERANCE / 2, True),
                                          (mc.PROBE_TOLERANCE * 2, False)])
def test_the_probe_runs_on_the_provider_in_use_mock(tmp_path, caplog, drift, served):
    write(tmp_path, "m", 1, GOOD)
    policy = ProviderPolicy("cuda", driver_present=lambda: True)
    refused: list[Refusal] = []
    with caplog.at_level(logging.INFO):
        loaded = Loader(policy, lambda path, _: DriftingRunner(path, drift)).load_all(
            tmp_path, refused=refused)
    assert len(loaded) == int(served) and len(refused) == int(not served)
    if served:
        assert loaded[0].spec.probe_max_abs_diff == pytest.approx(drift, abs=1e-5)
    else:
        assert f"on {CUDA}" in refused[0].reason
