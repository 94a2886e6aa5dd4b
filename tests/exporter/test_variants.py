"""The FP16 path of exporter/variants.py, which needs CUDA, on this CPU-only machine: a fake
`cuda_session` stands in for a GPU that cannot run here and hands out real onnxruntime CPU
sessions (or None, as onnxruntime does when CUDA does not take a model). The model is a tiny
hand-made graph with the serving contract (uint8 `image` in; `logits`, `probabilities` out), so
these tests cost no export. The variants through the real command line: test_flags.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_contract as mc
from exporter import cli, variants
from exporter.parity import cpu_session
from trainer import data as fmnist


def _contract_model() -> onnx.ModelProto:
    """image uint8 [N, 1, 28, 28] -> Cast -> Reshape -> Gemm = logits -> Softmax = probabilities."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(784, 10)).astype(np.float32) * 0.01, "w"),
             numpy_helper.from_array(rng.normal(size=10).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")]
    nodes = [helper.make_node("Cast", [mc.INPUT], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], [mc.LOGITS]),
             helper.make_node("Softmax", [mc.LOGITS], [mc.PROBABILITIES], axis=-1)]
    graph = helper.make_graph(
        nodes, "contract", [helper.make_tensor_value_info(mc.INPUT, TensorProto.UINT8,
                                                          ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", mc.NUM_CLASSES])
         for name in mc.OUTPUTS], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def reference(fmnist_dir) -> variants.Reference:
    model, data = _contract_model(), fmnist.load(fmnist_dir)
    session = cpu_session(model.SerializeToString())
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    test_logits = variants.logits(session, images)
    record = mc.ModelMetadata(
        arch="lenet", labels=tuple(fmnist.LABELS), input_side=28,
        test_accuracy=float((test_logits.argmax(1) == labels).mean()), source_sha256="0" * 64,
        exported_at="2026-01-01T00:00:00+00:00", torch_version="test", test_images=len(labels),
        max_abs_diff=0.0, top1_agreement=1.0)
    return variants.Reference(model, session, record, images, labels, test_logits,
                              data.train_images)


def _fake_cuda(monkeypatch, answers: list[bool]) -> list[bytes]:
    """Replace cuda_session (no GPU here): each call takes the next answer, True for a real CPU
    session on the model, False for None. Returns the models it was asked for."""
    asked = []

    def cuda_session(model_bytes: bytes):
        asked.append(model_bytes)
        return cpu_session(model_bytes) if answers.pop(0) else None

    monkeypatch.setattr(variants, "cuda_session", cuda_session)
    return asked


def test_fp16_without_cuda_is_not_written_and_says_why(reference, monkeypatch):
    _fake_cuda(monkeypatch, [False])
    v = variants.fp16(reference)
    assert not v.written and v.model_bytes is None
    assert v.reason == ("no CUDA provider on this machine: FP16 is checked on CUDA only, so it is "
                        "not written")


def test_fp16_that_cuda_does_not_take_is_not_written_and_says_why(reference, monkeypatch):
    """Issue 25: the fp32 model came up on CUDA, the FP16 one did not (cuda_session gave None);
    the variant is reported as not written, with the reason, instead of crashing."""
    asked = _fake_cuda(monkeypatch, [True, False])
    v = variants.fp16(reference)
    assert len(asked) == 2 and asked[1] != asked[0]  # the second call was for the FP16 model
    assert not v.written and v.model_bytes is None
    assert v.reason == ("onnxruntime did not put the FP16 model on the CUDA provider (the fp32 "
                        "model runs there): FP16 is checked on CUDA only, so it is not written")
    assert v.as_report()["file"] is None and v.line("lenet") == f"lenet: fp16 not written: {v.reason}"


def test_fp16_that_passes_is_written_with_its_own_metadata(reference, monkeypatch):
    """The rest of the CUDA path, run on the CPU sessions the fake hands out."""
    _fake_cuda(monkeypatch, [True, True])
    v = variants.fp16(reference, variants.Gate(min_agreement=0.95))
    assert v.written, v.reason
    model = onnx.load_from_string(v.model_bytes)
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    record = mc.ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert record.variant == "fp16" and record.arch == "lenet"
    assert record.max_abs_diff is None and record.top1_agreement is None
    assert record.fp32_agreement == pytest.approx(v.figures["fp32_agreement"], abs=1e-6)
    assert record.variant_recipe["converter"] == "onnxruntime.transformers.float16"
    probe = mc.decode_probe(record.probe)
    (p,) = cpu_session(v.model_bytes).run([mc.PROBABILITIES], {mc.INPUT: probe.images})
    assert np.abs(p - probe.probabilities).max() <= mc.VARIANT_PROBE_TOLERANCE["fp16"]
    assert v.figures["max_abs_diff_probabilities"] <= variants.FP16_MAX_ABS_DIFF_PROB


def test_fp16_probabilities_gate(reference, monkeypatch):
    monkeypatch.setattr(variants, "FP16_MAX_ABS_DIFF_PROB", -1.0)
    _fake_cuda(monkeypatch, [True, True])
    v = variants.fp16(reference, variants.Gate(min_agreement=0.95))
    assert not v.written
    assert v.reason.startswith("gate missed: max |Δ probability| against fp32 on CUDA ")


def test_bad_variant_names_are_refused():
    with pytest.raises(SystemExit):
        cli.get_args_parser().parse_args(["--variants", "int4"])
    with pytest.raises(SystemExit):
        cli.get_args_parser().parse_args(["--int8-recipes", "magic"])
