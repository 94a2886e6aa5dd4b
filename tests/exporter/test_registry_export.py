"""Every registered architecture goes through the whole export with random weights and
non-trivial BatchNorm statistics, once (module-scoped), and the written file is then checked from
the outside: onnxruntime at batch 1 and 7 against the unfolded PyTorch model, and its metadata."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import numpy as np
import onnx
import pytest
import torch

import model_contract
from exporter import pipeline
from exporter.parity import cpu_session
from exporter.testing import random_net, write_checkpoint
from exporter.wrap import Servable
from tests.conftest import write_fashion_mnist
from tests.exporter import written
from trainer import checkpoint
from trainer import data as fmnist
from trainer.models import ARCHITECTURES


TEST_IMAGES = 16  # the probe's count: parity must then agree on every image


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory):
    """16 test images: the parity thresholds still apply (an agreement of 0.9995 means all 16),
    and alexnet, vgg11 and nin at 224x224 cost a sixteenth of what the shared 256-image set
    would (vgg11 is ~7.6 GFLOPs an image, run by PyTorch and by onnxruntime)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist-16"), n_train=16,
                               n_test=TEST_IMAGES)


@pytest.fixture(scope="module")
def small_test_set(small_fmnist) -> fmnist.FashionMNIST:
    return fmnist.load(small_fmnist)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, tmp_path_factory, small_test_set):
    arch = request.param
    artifacts = tmp_path_factory.mktemp(f"export-{arch}")
    net = random_net(arch, seed=3)
    ckpt = write_checkpoint(net, arch, checkpoint.checkpoint_dir(artifacts, arch) / "best.pt")
    report = pipeline.export_arch(arch, artifacts, lambda: small_test_set)
    return arch, net, ckpt, report


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_matches_unfolded_pytorch(exported, batch):
    arch, net, _, report = exported
    session = cpu_session(open(report.model, "rb").read())
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(batch))
    logits, probabilities = session.run(None, {"image": images.numpy()})
    with torch.inference_mode():
        want_logits, want_probabilities = Servable(net, ARCHITECTURES[arch].input_side).eval()(images)
    assert logits.shape == probabilities.shape == (batch, 10)
    assert logits.dtype == probabilities.dtype == np.float32
    np.testing.assert_allclose(logits, want_logits.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(probabilities, want_probabilities.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-6)


def test_graph_interface_and_folding(exported):
    arch, _, _, report = exported
    model = onnx.load(report.model)
    (image,) = model.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    remaining = len(report.bn_remaining)
    assert report.nodes["folded"].get("BatchNormalization", 0) == remaining
    assert report.nodes["unfolded"].get("BatchNormalization", 0) == remaining + len(report.bn_folded)
    assert (arch == "densenet") == (remaining > 0)


def test_metadata_describes_the_model(exported):
    arch, _, ckpt, report = exported
    meta = {p.key: p.value for p in onnx.load(report.model).metadata_props}
    assert meta["fmnist.arch"] == arch
    assert json.loads(meta["fmnist.labels"]) == list(fmnist.LABELS)
    assert meta["fmnist.input_side"] == str(ARCHITECTURES[arch].input_side)
    assert float(meta["fmnist.test_accuracy"]) == pytest.approx(report.parity["onnx_accuracy"], abs=1e-4)
    assert meta["fmnist.test_images"] == str(TEST_IMAGES)  # the synthetic test set, all of it
    assert json.loads(meta["fmnist.bn_folded"]) == {b["bn"]: b["into"] for b in report.bn_folded}
    assert json.loads(meta["fmnist.bn_remaining"]) == {b["bn"]: b["reason"] for b in report.bn_remaining}
    assert meta["fmnist.source_checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert datetime.fromisoformat(meta["fmnist.exported_at"]).tzinfo is not None
    assert meta["fmnist.torch_version"] == str(torch.__version__)
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(open(report.model.replace("model.onnx", "report.json")).read())["metadata"] == meta


def test_metadata_accuracy_is_the_written_files_own(exported, small_test_set):
    """Measured again from model.onnx alone: the metadata and report.json come from one object, so
    comparing them with each other could not catch a wrong measurement. Random networks answer
    one class for every image, so here this catches a wrong subset or count, not wrong labels;
    test_cli's trained lenet_bn catches those."""
    _, _, _, report = exported
    accuracy = written.accuracy(report.model, small_test_set.test_images.numpy(),
                                small_test_set.test_labels.numpy())
    assert written.metadata(report.model)["fmnist.test_accuracy"] == f"{accuracy:.4f}"


def test_probe_is_reproduced_by_the_written_file(exported, small_test_set):
    """The server re-runs the probe where it serves; on the CPU it must give the same answers."""
    _, _, _, report = exported
    probe = model_contract.decode_probe(written.metadata(report.model)["fmnist.probe"])
    np.testing.assert_array_equal(probe.images, small_test_set.test_images[:16].numpy())
    (probabilities,) = written.session(report.model).run(["probabilities"], {"image": probe.images})
    np.testing.assert_allclose(probe.probabilities, probabilities, rtol=0, atol=1e-6)
