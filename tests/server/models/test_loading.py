"""server/models/loading.py and server/models/providers.py: scanning, version picking, metadata, skipping bad files,
falling back to an older version, and the execution-provider policy (real onnxruntime; on a host
without a usable GPU the CUDA-active paths use a fake runner, and the tests that need CUDA to be
absent skip on a host where it is usable)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from server.errors import ModelLoadError, StartupError, Unavailable
from execution_providers import CPU, CUDA, CudaOptions
from server.models.providers import ProviderPolicy
from server.models.runner import OnnxRunner
from server.models.loading import load_models
from server.models.scan import parse_version_flags, pick_versions, scan
from server.models.spec import Refusal, parse_metadata
from tests.server.fakes import CUDA_USABLE, FakeRunner, metadata, needs_no_gpu



def make_tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for name, versions in layout.items():
        for v in versions:
            (root / name / v).mkdir(parents=True)
            (root / name / v / "model.onnx").write_bytes(b"x")
    return root


def test_scan_takes_canonical_version_folders_only_and_says_once_what_it_ignored(tmp_path, caplog):
    """"03" would shadow "3" (whichever iterdir lists last), "4\n" would be version 4, and a 19-digit
    name does not fit the int64 that ListModels sends: none of them is a version."""
    too_big = "1" + "0" * 18
    make_tree(tmp_path, {"a": ["1", "2", "3", "03", "4\n", "10", too_big, "tmp-11", "0", "x"],
                         ".hidden": ["1"]})
    (tmp_path / "a" / ".4.abc.tmp").mkdir()  # the exporter's folder before its rename: silent
    (tmp_path / "b" / "3").mkdir(parents=True)  # no model.onnx inside
    with caplog.at_level(logging.WARNING):
        found = scan(tmp_path)
    assert {name: sorted(v) for name, v in found.items()} == {"a": [1, 2, 3, 10]}
    assert found["a"][3].parent.name == "3"
    [line] = [r.getMessage() for r in caplog.records]
    for shown in ("a/03", "a/4\\n", f"a/{too_big}", "a/tmp-11", "a/0", "a/x", "b/3",
                  "no model.onnx inside"):
        assert shown in line, line
    assert ".hidden" not in line and ".tmp" not in line
    assert scan(tmp_path / "missing") == {}


def test_pick_newest_or_the_named_versions(tmp_path):
    found = scan(make_tree(tmp_path, {"a": ["1", "2", "10"], "b": ["4"]}))
    def versions(picked):
        return [(name, [v for v, _ in candidates]) for name, candidates in picked]

    assert versions(pick_versions(found)) == [("a", [10, 2, 1]), ("b", [4])]  # newest first
    wanted = parse_version_flags(["a=2", "a=1"])
    assert versions(pick_versions(found, wanted)) == [("a", [1]), ("a", [2]), ("b", [4])]
    with pytest.raises(StartupError, match=r"a=3: no such version .* versions \[1, 2, 10\]"):
        pick_versions(found, {"a": {3}})
    with pytest.raises(StartupError, match="names zzz, not in the models folder"):
        pick_versions(found, {"zzz": {1}})


@pytest.mark.parametrize("flag", ["a", "a=", "=2", "a=x", "a=0", "a=-1", "a=03", "a=+3", "a=3\n",
                                  "a=" + "9" * 19])
def test_bad_version_flags(flag):
    with pytest.raises(ValueError, match="NAME=VERSION"):
        parse_version_flags([flag])


@pytest.mark.parametrize("key,value,reason", [
    ("fmnist.labels", "not json", "not JSON"),
    ("fmnist.labels", '["a", "b"]', "list of 10"),
    ("fmnist.labels", "[" * 1500, "RecursionError"),  # within the length bound, too deep for json
    ("fmnist.labels", "[" * 100_000, "characters"),
    ("fmnist.labels", json.dumps(["x" * 1000] * 10), "characters"),
    ("fmnist.labels", json.dumps(["\ud800"] * 10), "UTF-8"),  # protobuf cannot send it
    ("fmnist.input_side", "big", "input_side"),
    ("fmnist.input_side", "0", "1 to 2147483647"),
    ("fmnist.input_side", "2147483648", "1 to 2147483647"),  # past ListModels' int32
    ("fmnist.input_side", "2_8", "input_side"),
    ("fmnist.test_images", "2147483648", "1 to 2147483647"),
    ("fmnist.test_images", "-5", "test_images"),
    ("fmnist.test_images", "9" * 5000, "test_images"),  # past int()'s digit limit
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
    src = models_dir / "lenet" / "1" / "model.onnx"
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


@needs_no_gpu
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


@needs_no_gpu
def test_real_cuda_request_fails_at_start_up(models_dir):
    with pytest.raises(StartupError, match="--device cuda: .*CUDAExecutionProvider"):
        load_models(models_dir, ProviderPolicy("cuda"))


@pytest.mark.skipif(not CUDA_USABLE, reason="needs onnxruntime's CUDA provider and an NVIDIA driver")
def test_real_cuda_is_active_on_a_gpu_host(models_dir):
    loaded = load_models(models_dir, ProviderPolicy("cuda"))
    assert len(loaded) == 2 and {m.provider for m in loaded} == {CUDA}


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
    # CUDA with the options every CUDA session gets (TF32 off: test_cuda_options.py)
    assert all(providers == [CudaOptions().provider(), CPU] for _, providers in made)
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


def fake_factory(path, providers):
    return FakeRunner(path.parent.parent.name)


def test_symlinks_out_of_the_models_folder_are_refused(tmp_path, caplog):
    """A version folder, a model folder or a model.onnx that resolves outside the models folder is
    not served; a link that stays inside it is."""
    outside = make_tree(tmp_path / "elsewhere", {"x": ["1"]}) / "x"
    root = make_tree(tmp_path / "models", {"inside": ["1"], "linkfile": ["1"]})
    (root / "linkversion").mkdir()
    (root / "linkversion" / "1").symlink_to(outside / "1")
    (root / "linkmodel").symlink_to(outside)
    (root / "linkfile" / "1" / "model.onnx").unlink()
    (root / "linkfile" / "1" / "model.onnx").symlink_to(outside / "1" / "model.onnx")
    (root / "inside" / "2").symlink_to(root / "inside" / "1")
    refused: list[Refusal] = []
    with caplog.at_level(logging.WARNING):
        loaded = load_models(root, ProviderPolicy("cpu"), runner_factory=fake_factory,
                             refused=refused)
    assert [(m.spec.name, m.spec.version) for m in loaded] == [("inside", 2)]
    assert sorted((r.name, r.version) for r in refused) == [("linkfile", 1), ("linkversion", 1)]
    assert all("outside the models folder" in r.reason for r in refused)
    for shown in ("linkmodel", "linkversion/1", "linkfile/1", "outside the models folder"):
        assert shown in caplog.text


def test_a_broken_newest_version_falls_back_to_the_next_older_one(models_dir, tmp_path, caplog):
    root = tmp_path / "models"
    copy_model(models_dir, root, "m", version=1)
    copy_model(models_dir, root, "m", version=2, edit=drop_key("fmnist.labels"))
    (root / "m" / "3").mkdir()
    (root / "m" / "3" / "model.onnx").write_bytes(b"not onnx")
    refused: list[Refusal] = []
    with caplog.at_level(logging.INFO):
        loaded = load_models(root, ProviderPolicy("cpu"), refused=refused)
    assert [(m.spec.name, m.spec.version) for m in loaded] == [("m", 1)]
    assert [(r.name, r.version) for r in refused] == [("m", 3), ("m", 2)]
    assert "onnxruntime cannot load it" in refused[0].reason
    assert "missing metadata fmnist.labels" in refused[1].reason
    assert "skipping model m v3" in caplog.text and "skipping model m v2" in caplog.text
    assert "serving m v1 instead of v3" in caplog.text


def test_a_version_named_by_flag_that_fails_is_not_replaced(models_dir, tmp_path, caplog):
    """--model-version asked for that version: serving another one would be a surprise."""
    root = tmp_path / "models"
    copy_model(models_dir, root, "m", version=1)
    copy_model(models_dir, root, "m", version=2, edit=drop_key("fmnist.labels"))
    refused: list[Refusal] = []
    with caplog.at_level(logging.INFO):
        assert load_models(root, ProviderPolicy("cpu"), {"m": {2}}, refused=refused) == []
    assert [(r.name, r.version) for r in refused] == [("m", 2)]
    assert "loaded model" not in caplog.text


def test_every_version_failing_leaves_the_model_out_and_the_rest_served(tmp_path, caplog):
    root = make_tree(tmp_path, {"a": ["1", "2"], "b": ["1"]})

    def factory(path, providers):
        if path.parent.parent.name == "a":
            raise ModelLoadError("broken")
        return fake_factory(path, providers)

    refused: list[Refusal] = []
    with caplog.at_level(logging.INFO):
        loaded = load_models(root, ProviderPolicy("cpu"), runner_factory=factory, refused=refused)
    assert [m.spec.name for m in loaded] == ["b"]
    assert refused == [Refusal("a", 2, "broken"), Refusal("a", 1, "broken")]
    assert "no version of a could be served" in caplog.text
