"""Precision variants (exporter/variants.py) through the real CLI, on the tiny synthetic data set
and a random lenet_bn (non-trivial BatchNorm): a variant that passes the gate is written beside
model.onnx with its own metadata and probe, in the same version folder; one that misses the gate
is not written, and the report and the output say why."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import model_contract as mc
from exporter import cli, metadata
from exporter.testing import random_net, write_checkpoint
from exporter.variants import cuda_available


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    write_checkpoint(random_net("lenet_bn"), "lenet_bn",
                     root / "checkpoints" / "lenet_bn" / "best.pt")
    return root


def export(artifacts, fmnist_dir, capsys, *extra: str) -> tuple[int, str]:
    args = cli.get_args_parser().parse_args(
        ["--models", "lenet_bn", "--artifacts", str(artifacts), "--data-dir", str(fmnist_dir),
         "--no-progress", "--force", *extra])
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def written(artifacts, fmnist_dir):
    """One export with --variants int8 (module-scoped: capsys is per test, so a plain call)."""
    args = cli.get_args_parser().parse_args(
        ["--models", "lenet_bn", "--artifacts", str(artifacts), "--data-dir", str(fmnist_dir),
         "--no-progress", "--force", "--variants", "int8,fp16",
         "--int8-recipes", "s8s8-pc-minmax,s8s8-pc-minmax-float-ends"])
    assert cli.main(args) == 0
    return artifacts / "models" / "lenet_bn" / "1"


def test_int8_is_written_beside_fp32_with_its_own_metadata(written):
    assert sorted(p.name for p in written.iterdir()) == ["model.int8.onnx", "model.onnx",
                                                         "report.json"]
    fp32, int8 = metadata.read(written / mc.MODEL_FILE), metadata.read(written / "model.int8.onnx")
    assert mc.VARIANT not in fp32
    assert int8[mc.VARIANT] == "int8"
    assert int8[mc.ARCH] == "lenet_bn" and int8[mc.SOURCE_SHA256] == fp32[mc.SOURCE_SHA256]
    assert json.loads(int8[mc.VARIANT_RECIPE])["format"] == "QDQ"
    assert json.loads(int8[mc.VARIANT_RECIPE])["name"] in ("s8s8-pc-minmax",
                                                           "s8s8-pc-minmax-float-ends")
    assert float(int8[mc.FP32_AGREEMENT]) >= 0.99
    assert float(int8[mc.FP32_ACCURACY]) == float(fp32[mc.TEST_ACCURACY])
    speed = json.loads(int8[mc.VARIANT_SPEED])
    assert speed["batch32"]["fp32"] > 0 and speed["batch32"]["variant"] > 0
    assert int8[mc.PROBE] != fp32[mc.PROBE]  # its own probabilities, not fp32's
    # the contract holds: uint8 image in, float32 logits and probabilities out
    session = ort.InferenceSession(str(written / "model.int8.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("logits", "tensor(float)"), ("probabilities", "tensor(float)")]
    ops = {n.op_type for n in __import__("onnx").load(str(written / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    probe = mc.decode_probe(int8[mc.PROBE])
    (p,) = session.run(["probabilities"], {"image": probe.images})
    assert np.abs(p - probe.probabilities).max() <= mc.VARIANT_PROBE_TOLERANCE["int8"]


def test_report_lists_the_variants_and_candidates(written):
    report = json.loads((written / "report.json").read_text())
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["int8"]["written"] and by_name["int8"]["file"] == "model.int8.onnx"
    assert [c["recipe"] for c in by_name["int8"]["candidates"]] == [
        "s8s8-pc-minmax", "s8s8-pc-minmax-float-ends"]
    if not cuda_available():
        assert not by_name["fp16"]["written"]
        assert "no CUDA provider" in by_name["fp16"]["reason"]


def test_a_variant_that_misses_the_gate_is_not_written(artifacts, fmnist_dir, capsys):
    code, out = export(artifacts, fmnist_dir, capsys, "--variants", "int8",
                       "--int8-max-drop", "-1", "--int8-recipes", "s8s8-pc-minmax")
    assert code == 0  # the fp32 model is still exported
    folder = max((p for p in (artifacts / "models" / "lenet_bn").iterdir()
                  if mc.parse_version(p.name)), key=lambda p: int(p.name))
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "report.json"]
    (int8,) = json.loads((folder / "report.json").read_text())["variants"]
    assert not int8["written"] and int8["file"] is None
    assert "points below fp32" in int8["reason"] and "limit -1" in int8["reason"]
    assert "lenet_bn: int8 not written: gate missed with recipe s8s8-pc-minmax" in out


def test_agreement_gate_too(artifacts, fmnist_dir, capsys):
    code, out = export(artifacts, fmnist_dir, capsys, "--variants", "int8",
                       "--variant-min-agreement", "1.01", "--int8-recipes", "s8s8-pc-minmax")
    assert code == 0
    assert "int8 not written" in out and "top-1 agreement with fp32" in out


def test_fp16_without_cuda_says_so_in_one_line(artifacts, fmnist_dir, capsys):
    if cuda_available():
        pytest.skip("this machine has CUDA")
    code, out = export(artifacts, fmnist_dir, capsys, "--variants", "fp16")
    assert code == 0
    lines = [line for line in out.splitlines() if "fp16" in line]
    assert lines == ["lenet_bn: fp16 not written: no CUDA provider on this machine: FP16 is "
                     "checked on CUDA only, so it is not written"]


def test_bad_variant_names_are_refused():
    with pytest.raises(SystemExit):
        cli.get_args_parser().parse_args(["--variants", "int4"])
    with pytest.raises(SystemExit):
        cli.get_args_parser().parse_args(["--int8-recipes", "magic"])


def test_bench_variants_reads_the_export(written, tmp_path, capsys):
    import shutil

    from bench import variants as bench
    shutil.copytree(written, tmp_path / "models" / "lenet_bn" / "1")
    assert bench.main(bench.get_args_parser().parse_args(
        ["--artifacts", str(tmp_path), "--seconds", "0.05"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "ISA:" in out.splitlines()[0]
    result = json.loads((tmp_path / "bench" / "variants.json").read_text())
    rows = {(r["arch"], r["variant"]): r for r in result["rows"]}
    assert set(rows) >= {("lenet_bn", "fp32"), ("lenet_bn", "int8")}
    int8 = rows[("lenet_bn", "int8")]
    assert int8["ratio_b32"] > 0 and int8["ratio_b1"] > 0 and int8["agreement"] >= 0.99
    assert 0 < int8["mb"] < rows[("lenet_bn", "fp32")]["mb"]
    assert any("lenet_bn int8 at batch 32" in t for t in result["targets"])
    assert bench.cuda_available() or any(t.startswith("fp16: no GPU here") for t in result["targets"])
