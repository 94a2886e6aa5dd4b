"""Shared weights (server/models/weights.py, --share-weights): processes serving the same model
through one cache map one copy of its weights. Shown with a model whose weights are 77 MB (a
made-up one of the model contract's shape: the test models' are a few hundred KB, below what
memory figures can tell from noise), two processes each holding an OnnxRunner of it."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.process import ServerProcess, pss_mb
from server.models import weights
from server.models.runner import OnnxRunner
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

WIDTH = 24_576  # 784 x 24,576 float32 weights: 77 MB, past weights.PACK_LIMIT


def big_model(path: Path) -> Path:
    """uint8 image [N,1,28,28] -> Cast -> Reshape [N,784] -> Gemm (784 x WIDTH) -> Gemm
    (WIDTH x 10) -> logits, Softmax -> probabilities."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((784, WIDTH), np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((WIDTH, 10), np.float32) * 0.01, "w2")
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    graph = helper.make_graph([
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)], "big",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [w1, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def hold(path: str, cache: str | None, ready, done) -> None:
    runner = OnnxRunner(path, ["CPUExecutionProvider"], 1, False,
                        None if cache is None else Path(cache))
    runner.warmup(8)
    ready.set()
    done.wait(120)


def two_processes_pss(path: Path, cache: Path | None) -> float:
    context = multiprocessing.get_context("spawn")
    done, procs = context.Event(), []
    try:
        for _ in range(2):
            ready = context.Event()
            procs.append(context.Process(target=hold, args=(str(path), cache and str(cache),
                                                             ready, done)))
            procs[-1].start()
            assert ready.wait(120), "a runner did not come up"
        return sum(pss_mb(p.pid) for p in procs)
    finally:
        done.set()
        for p in procs:
            p.join(60)


@pytest.mark.slow
def test_two_processes_share_one_copy_of_the_weights(tmp_path):
    path = big_model(tmp_path / "model.onnx")
    weights.prepared(path, tmp_path / "cache")  # made once, as the first worker makes it
    private = two_processes_pss(path, None)
    shared = two_processes_pss(path, tmp_path / "cache")
    assert private - shared > 60, (private, shared)  # about one 77 MB copy fewer


def test_a_copy_is_made_once_answers_as_the_model_and_keeps_its_metadata(models_dir, tmp_path,
                                                                          caplog):
    model = models_dir / "lenet_bn" / "1" / "model.onnx"
    images = np.random.default_rng(1).integers(0, 255, (4, 1, 28, 28), np.uint8)
    plain = OnnxRunner(model, ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="server.models.weights"):
        first = OnnxRunner(model, ["CPUExecutionProvider"], weights_cache=tmp_path)
        second = OnnxRunner(model, ["CPUExecutionProvider"], weights_cache=tmp_path)
    assert sum("prepared shared weights" in r.getMessage() for r in caplog.records) == 1
    assert "shared_weights=on" in first.settings and "shared_weights=off" in plain.settings
    assert first.metadata == plain.metadata  # fmnist.* keys: the probe is checked on the copy
    np.testing.assert_allclose(second.run(images).probabilities, plain.run(images).probabilities,
                               atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.iterdir()).name]  # no .tmp


def test_an_unwritable_cache_is_one_warning_and_the_file_itself(models_dir, tmp_path, caplog):
    cache = tmp_path / "not-a-folder"
    cache.write_text("")  # mkdir inside it fails
    model = models_dir / "lenet" / "1" / "model.onnx"
    with caplog.at_level(logging.WARNING):
        runners = [OnnxRunner(model, ["CPUExecutionProvider"], weights_cache=cache)
                   for _ in range(2)]
    assert all("shared_weights=off" in r.settings for r in runners)
    assert sum("cannot share weights" in r.getMessage() for r in caplog.records) == 1



@pytest.mark.parametrize("share", ["on", "off"])
def test_the_server_flags_choose_the_shared_copy(models_dir, tmp_path, share):
    """`python -m server --share-weights on|off --weights-cache DIR`: on, the sessions load the
    copy made in DIR (the "loaded model" line says shared_weights=on); off, DIR stays empty."""
    cache, root = tmp_path / "cache", tmp_path / "models"
    shutil.copytree(models_dir / "lenet", root / "lenet")
    with ServerProcess("--models-dir", str(root), "--port", "0",
                       "--device", "cpu", "--share-weights", share,
                       "--weights-cache", str(cache)) as server:
        server.wait_for_port()
        server.wait_for_log("loaded model lenet")
        assert server.count(f"shared_weights={share}") >= 1, server.log
    entries = sorted(cache.iterdir()) if cache.exists() else []
    assert (len(entries) == 1) == (share == "on"), entries
