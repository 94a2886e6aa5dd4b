"""server/store.py and server/providers.py: scanning, version picking, metadata, skipping bad files,
and the execution-provider policy (real onnxruntime on this CPU-only machine; CUDA-active paths
with a fake runner, since no GPU is here)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from server.errors import ModelLoadError, StartupError, Unavailable
from server.providers import CPU, CUDA, ProviderPolicy
from server.runner import OnnxRunner
from server.store import load_models, parse_metadata, parse_version_flags, pick_versions, scan
from tests.server.fakes import FakeRunner, metadata


def make_tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for name, versions in layout.items():
        for v in versions:
            (root / name / v).mkdir(parents=True)
            (root / name / v / "model.onnx").write_bytes(b"x")
    return root


def test_scan_takes_integer_version_folders_only(tmp_path, caplog):
    make_tree(tmp_path, {"a": ["1", "2", "10", "tmp-11", "0", "x"], ".hidden": ["1"]})
    (tmp_path / "b" / "3").mkdir(parents=True)  # no model.onnx inside
    with caplog.at_level(logging.WARNING):
        found = scan(tmp_path)
    assert {name: sorted(v) for name, v in found.items()} == {"a": [1, 2, 10]}
    assert "no model.onnx inside" in caplog.text
    assert scan(tmp_path / "missing") == {}


def test_pick_newest_or_the_named_versions(tmp_path):
    found = scan(make_tree(tmp_path, {"a": ["1", "2", "10"], "b": ["4"]}))
    assert [(n, v) for n, v, _ in pick_versions(found)] == [("a", 10), ("b", 4)]
    wanted = parse_version_flags(["a=2", "a=1"])
    assert [(n, v) for n, v, _ in pick_versions(found, wanted)] == [("a", 1), ("a", 2), ("b", 4)]
    with pytest.raises(StartupError, match=r"a=3: no such version .* versions \[1, 2, 10\]"):
        pick_versions(found, {"a": {3}})
    with pytest.raises(StartupError, match="names zzz, not in the models folder"):
        pick_versions(found, {"zzz": {1}})


@pytest.mark.parametrize("flag", ["a", "a=", "=2", "a=x", "a=0", "a=-1"])
def test_bad_version_flags(flag):
    with pytest.raises(ValueError, match="NAME=VERSION"):
        parse_version_flags([flag])


@pytest.mark.parametrize("key,value,reason", [
    ("fmnist.labels", "not json", "not JSON"),
    ("fmnist.labels", '["a", "b"]', "list of 10"),
    ("fmnist.input_side", "big", "input_side"),
    ("fmnist.input_side", "0", "positive"),
    ("fmnist.test_accuracy", "1.5", r"in \[0, 1\]"),
    ("fmnist.test_accuracy", "nan", r"in \[0, 1\]"),
    ("fmnist.arch", "other", "does not match its folder name"),
])
def test_invalid_metadata_is_refused(key, value, reason):
    meta = dict(metadata("m"), **{key: value})
    with pytest.raises(ModelLoadError, match=reason):
        parse_metadata("m", 1, Path("m.onnx"), meta)
    missing = metadata("m")
    del missing["fmnist.bn_folded"]
    with pytest.raises(ModelLoadError, match="missing metadata fmnist.bn_folded"):
        parse_metadata("m", 1, Path("m.onnx"), missing)


def copy_model(models_dir: Path, root: Path, name: str, version: int = 1, edit=None) -> Path:
    src = next((models_dir / "lenet").iterdir()) / "model.onnx"
    dst = root / name / str(version) / "model.onnx"
    dst.parent.mkdir(parents=True)
    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        if entry.key == "fmnist.arch":
            entry.value = name
    if edit:
        edit(proto)
    onnx.save(proto, str(dst))
    return dst


def drop_key(key):
    def edit(proto):
        kept = [(e.key, e.value) for e in proto.metadata_props if e.key != key]
        del proto.metadata_props[:]
        for k, v in kept:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
    return edit


def test_bad_files_are_skipped_with_one_line_each_and_the_rest_load(models_dir, tmp_path, caplog):
    root = tmp_path / "models"
    copy_model(models_dir, root, "good")
    copy_model(models_dir, root, "nolabels", edit=drop_key("fmnist.labels"))
    (root / "garbage" / "1").mkdir(parents=True)
    (root / "garbage" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    shutil.copytree(models_dir / "lenet_bn", root / "renamed")  # fmnist.arch says lenet_bn
    with caplog.at_level(logging.INFO):
        loaded = load_models(root, ProviderPolicy("cpu"))
    assert [m.spec.name for m in loaded] == ["good"]
    skipped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(skipped) == 3
    text = "\n".join(r.getMessage() for r in skipped)
    assert "garbage v1" in text and "onnxruntime cannot load it" in text
    assert "nolabels v1" in text and "missing metadata fmnist.labels" in text
    assert "renamed v1" in text and "does not match its folder name" in text


def test_wrong_input_contract_is_refused(models_dir, tmp_path):
    def uint8_to_float(proto):
        proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    path = copy_model(models_dir, tmp_path, "m", edit=uint8_to_float)
    with pytest.raises(ModelLoadError):
        OnnxRunner(path, [CPU])


@pytest.mark.parametrize("driver", ["probed", "claimed present"])
def test_real_auto_falls_back_to_cpu_once_with_one_log_line(models_dir, caplog, driver):
    """Without a driver the policy never asks for CUDA; told a driver is there (it is not), it
    asks, and the real session's get_providers() shows CPU: one fallback line either way."""
    kwargs = {} if driver == "probed" else {"driver_present": lambda: True}
    with caplog.at_level(logging.INFO):
        policy = ProviderPolicy("auto", **kwargs)
        loaded = load_models(models_dir, policy)
    assert {m.provider for m in loaded} == {CPU}  # from session.get_providers(): no GPU here
    fallbacks = [r for r in caplog.records if "falling back to CPUExecutionProvider" in r.getMessage()]
    assert len(fallbacks) == 1
    assert policy.requested() == [CPU]  # the next sessions do not ask for CUDA again
    for m in loaded:
        assert any(f"loaded model {m.spec.name} v1 provider={CPU}" in r.getMessage()
                   for r in caplog.records)


def test_real_cuda_request_fails_at_start_up(models_dir):
    with pytest.raises(StartupError, match="--device cuda: .*CUDAExecutionProvider"):
        load_models(models_dir, ProviderPolicy("cuda"))


def test_cuda_active_is_reported_and_warmed_up_mock(models_dir):
    """MOCK: no GPU on this machine, so a fake runner stands for a session whose
    get_providers() starts with CUDAExecutionProvider."""
    made: list[tuple[FakeRunner, list]] = []

    def factory(path, providers):
        runner = FakeRunner(path.parent.parent.name, provider=CUDA)
        made.append((runner, providers))
        return runner

    policy = ProviderPolicy("cuda", driver_present=lambda: True)
    loaded = load_models(models_dir, policy, runner_factory=factory)
    assert [m.provider for m in loaded] == [CUDA, CUDA]
    assert all(providers == [CUDA, CPU] for _, providers in made)
    assert all(runner.warmups == 1 for runner, _ in made)


def test_warm_up_failure_skips_the_model(models_dir, caplog):
    def factory(path, providers):
        runner = FakeRunner(path.parent.parent.name)
        runner.warmup = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
        return runner

    with caplog.at_level(logging.ERROR):
        assert load_models(models_dir, ProviderPolicy("cpu"), runner_factory=factory) == []
    assert "warm-up run failed: RuntimeError: boom" in caplog.text


def test_a_closed_runner_refuses_to_run(models_dir):
    runner = OnnxRunner(models_dir / "lenet" / "1" / "model.onnx", [CPU])
    runner.warmup()
    runner.close()
    with pytest.raises(Unavailable, match="shutting down"):
        runner.run(np.zeros((1, 1, 28, 28), np.uint8))
