"""Every flag of `python -m exporter`, observed in what real runs leave: the version folders, the
ONNX files and their metadata, report.json, the log and the exit status.

Random lenet_bn and lenet checkpoints (non-trivial BatchNorm) and the tiny synthetic idx files;
three runs share the work:
FIRST    most flags given, progress bars on: lenet_bn v1 on 100 test images, with INT8;
then, side by side,
FULL     on FIRST's folder: every test image, --artifacts and --data-dir from $ARTIFACTS and
         $FASHION_MNIST_DIR, a speed gate no variant can pass, loose parity limits: v2, no INT8;
FORCED   on a copy of FIRST's folder: --force on the unchanged checkpoint, an accuracy and an
         agreement gate INT8 cannot pass: v2, no INT8.
Parity limits that refuse the export: `main` in this process (the refusal costs an export).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import model_contract as mc
from exporter import cli, metadata
from exporter.testing import random_net, write_checkpoint
from tests.exporter import written
from tests.exporter.cli_runs import Run, entries, finish, run_exporter, start_exporter
from trainer import checkpoint
from trainer import data as fmnist

ARCH = "lenet_bn"
RECIPES = ("u8s8-pt-minmax", "s8s8-pc-minmax")  # per-tensor and S8S8: the slow INT8 kernels
FIRST_FLAGS = ("--models", ARCH, "--opset", "19", "--batch-size", "7", "--test-images", "100",
               "--variants", "int8", "--int8-recipes", ",".join(RECIPES),
               "--calibration-images", "40")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    for arch in (ARCH, "lenet"):
        write_checkpoint(random_net(arch), arch, checkpoint.checkpoint_dir(root, arch) / "best.pt")
    return root


@pytest.fixture(scope="module")
def first(artifacts, fmnist_dir) -> Run:
    run = Run.of(run_exporter(*FIRST_FLAGS, "--artifacts", str(artifacts),
                              "--data-dir", str(fmnist_dir)), artifacts, ARCH)
    assert run.result.returncode == 0, run.err[-3000:]
    return run


@pytest.fixture(scope="module")
def later(first, artifacts, fmnist_dir, tmp_path_factory) -> dict[str, Run]:
    copy = tmp_path_factory.mktemp("flags-forced")
    shutil.copytree(artifacts, copy, dirs_exist_ok=True)
    started = {
        "full": (artifacts, start_exporter(
            "--models", ARCH, "--variants", "int8", "--int8-recipes", RECIPES[1],
            "--variant-min-speedup", "1000", "--max-abs-diff", "0.01", "--min-agreement", "0.5",
            "--no-progress",
            env={"ARTIFACTS": str(artifacts), "FASHION_MNIST_DIR": str(fmnist_dir)})),
        "forced": (copy, start_exporter(
            "--models", ARCH, "--artifacts", str(copy), "--data-dir", str(fmnist_dir),
            "--test-images", "100", "--force", "--no-progress", "--variants", "int8",
            "--int8-recipes", RECIPES[1], "--int8-max-drop", "-1",
            "--variant-min-agreement", "1.01")),
    }
    help_run = start_exporter("--help")
    runs = {name: Run.of(finish(proc), root, ARCH) for name, (root, proc) in started.items()}
    runs["help"] = Run.of(finish(help_run), artifacts, ARCH)
    for run in runs.values():
        assert run.result.returncode == 0, run.err[-3000:]
    return runs


@pytest.fixture(scope="module")
def full(later) -> Run:
    return later["full"]


@pytest.fixture(scope="module")
def forced(later) -> Run:
    return later["forced"]


# --- FIRST -------------------------------------------------------------------------------------

def test_models_and_artifacts_choose_what_is_exported_and_where(first, artifacts):
    assert first.versions_after == ["1"]
    assert entries(artifacts / "models") == [ARCH]  # lenet has a best.pt too, but was not asked
    assert entries(first.folder(1)) == ["model.int8.onnx", "model.onnx", "report.json"]
    assert f"{ARCH} v1 <- {artifacts / 'checkpoints' / ARCH / 'best.pt'}" in first.out


def test_data_dir_is_the_data_measured_on(first, fmnist_dir):
    assert f"test images: 256 from {fmnist_dir}" in first.out
    assert first.report(1)["data_source"] == str(fmnist_dir)


def test_opset_is_the_files_opset(first):
    model = onnx.load(str(first.folder(1) / mc.MODEL_FILE))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
    assert first.report(1)["opset"] == 19


def test_batch_size_is_the_parity_batch(first, full):
    assert first.report(1)["parity"]["batch_size"] == 7
    assert full.report(2)["parity"]["batch_size"] == 500  # the default for 28x28 networks


def test_test_images_is_what_parity_and_accuracy_saw(first, fmnist_dir):
    meta = written.metadata(first.folder(1) / mc.MODEL_FILE)
    assert meta[mc.TEST_IMAGES] == "100" and first.report(1)["parity"]["images"] == 100
    test = fmnist.load(fmnist_dir)
    accuracy = written.accuracy(first.folder(1) / mc.MODEL_FILE, test.test_images[:100].numpy(),
                                test.test_labels[:100].numpy())
    assert meta[mc.TEST_ACCURACY] == f"{accuracy:.4f}"


def test_progress_bars_show_unless_no_progress(first, full):
    assert f"{ARCH} parity" in first.err  # tqdm's bar, on stderr
    assert "parity:" not in full.err and "img/s]" not in full.err


def test_int8_recipes_and_calibration_images_are_what_ranked_and_calibrated(first):
    int8 = first.variant(1, "int8")
    assert [c["recipe"] for c in int8["candidates"]] == list(RECIPES)
    assert int8["calibration_images"] == 40
    recipe = json.loads(metadata.read(first.folder(1) / "model.int8.onnx")[mc.VARIANT_RECIPE])
    assert recipe["name"] in RECIPES and recipe["calibration_images"] == 40
    for name in RECIPES:
        assert f"  int8 candidate {name}: agreement with fp32 " in first.out


def test_int8_is_written_beside_fp32_with_its_own_metadata(first):
    folder = first.folder(1)
    fp32, int8 = metadata.read(folder / mc.MODEL_FILE), metadata.read(folder / "model.int8.onnx")
    assert mc.VARIANT not in fp32
    assert int8[mc.VARIANT] == "int8"
    assert int8[mc.ARCH] == ARCH and int8[mc.SOURCE_SHA256] == fp32[mc.SOURCE_SHA256]
    assert json.loads(int8[mc.VARIANT_RECIPE])["format"] == "QDQ"
    assert float(int8[mc.FP32_AGREEMENT]) >= 0.99
    assert float(int8[mc.FP32_ACCURACY]) == float(fp32[mc.TEST_ACCURACY])
    assert mc.MAX_ABS_DIFF not in int8 and mc.TOP1_AGREEMENT not in int8  # compared with fp32
    speed = json.loads(int8[mc.VARIANT_SPEED])
    assert speed["batch32"]["fp32"] > 0 and speed["batch32"]["variant"] > 0
    assert int8[mc.PROBE] != fp32[mc.PROBE]  # its own probabilities, not fp32's
    assert mc.ModelMetadata.from_props(int8).variant == "int8"  # as the server reads it
    # the contract holds: uint8 image in, float32 logits and probabilities out
    session = ort.InferenceSession(str(folder / "model.int8.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("logits", "tensor(float)"), ("probabilities", "tensor(float)")]
    ops = {n.op_type for n in onnx.load(str(folder / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    probe = mc.decode_probe(int8[mc.PROBE])
    (p,) = session.run(["probabilities"], {"image": probe.images})
    assert np.abs(p - probe.probabilities).max() <= mc.VARIANT_PROBE_TOLERANCE["int8"]


def test_a_variant_slower_than_fp32_is_written_with_one_warning_line(first):
    """Whether INT8 is slower than fp32 here is a measurement (the recipes are the slow kernels,
    ~0.4-0.7x on this CPU): the test asserts that the warning says what report.json measured,
    exactly when it measured a speed-up below 1."""
    int8 = first.variant(1, "int8")
    speed, ratio = int8["speed"], int8["speed"]["batch32"]["ratio"]
    warnings = [line for line in first.err.splitlines() if line.startswith("warning:")]
    assert (first.folder(1) / "model.int8.onnx").is_file()
    if ratio >= 1:
        assert warnings == [] and int8["warning"] is None
        return
    where = f"on this CPU ({speed['cpu']['model']}; {' '.join(speed['cpu']['isa']) or 'no AVX2'})"
    message = (f"int8 is written but runs at {ratio:.2f}x fp32's speed at batch 32 {where}: fp32 "
               f"serves faster here (--variant-min-speedup 1 skips such variants)")
    assert warnings == [f"warning: {ARCH}: {message}"]
    assert int8["warning"] == message


def test_bench_variants_reads_the_export(first, tmp_path, capsys):
    from bench import variants as bench
    shutil.copytree(first.folder(1), tmp_path / "models" / ARCH / "1")
    assert bench.main(bench.get_args_parser().parse_args(
        ["--artifacts", str(tmp_path), "--seconds", "0.05"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "ISA:" in out.splitlines()[0]
    result = json.loads((tmp_path / "bench" / "variants.json").read_text())
    rows = {(r["arch"], r["variant"]): r for r in result["rows"]}
    assert set(rows) >= {(ARCH, "fp32"), (ARCH, "int8")}
    int8 = rows[(ARCH, "int8")]
    assert int8["ratio_b32"] > 0 and int8["ratio_b1"] > 0 and int8["agreement"] >= 0.99
    assert 0 < int8["mb"] < rows[(ARCH, "fp32")]["mb"]
    assert any(f"{ARCH} int8 at batch 32" in t for t in result["targets"])
    assert bench.cuda_available() or any(t.startswith("fp16: no GPU here") for t in result["targets"])


# --- FULL, FORCED, refused ----------------------------------------------------------------------

def test_a_subset_export_does_not_stand_in_for_a_full_one(full, fmnist_dir, artifacts):
    """FULL has no --test-images, no --force: the v1 of 100 images is not the same export."""
    assert full.versions_after == ["1", "2"]
    assert full.report(2)["parity"]["images"] == 256
    assert written.metadata(full.folder(2) / mc.MODEL_FILE)[mc.TEST_IMAGES] == "256"
    assert full.report(2)["data_source"] == str(fmnist_dir)  # $FASHION_MNIST_DIR
    assert f"{ARCH} v2 <- {artifacts / 'checkpoints' / ARCH / 'best.pt'}" in full.out  # $ARTIFACTS


def test_variant_min_speedup_skips_a_variant_below_it(full):
    int8 = full.variant(2, "int8")
    ratio, cpu = int8["speed"]["batch32"]["ratio"], int8["speed"]["cpu"]
    reason = (f"it runs at {ratio:.2f}x fp32's speed at batch 32 on this CPU ({cpu['model']}; "
              f"{' '.join(cpu['isa']) or 'no AVX2'}), below --variant-min-speedup 1000")
    assert not int8["written"] and int8["file"] is None and int8["reason"] == reason
    assert f"{ARCH}: int8 not written: {reason}" in full.out.splitlines()
    assert entries(full.folder(2)) == ["model.onnx", "report.json"]
    assert "warning:" not in full.err  # not written: nothing to warn about


def test_parity_limits_are_the_ones_passed(first, full):
    parity = full.report(2)["parity"]
    assert (parity["limit_max_abs_diff"], parity["limit_top1_agreement"]) == (0.01, 0.5)
    assert "(limit 0.01), top-1 agreement" in full.out and "(limit 50.00%)" in full.out
    parity = first.report(1)["parity"]
    assert (parity["limit_max_abs_diff"], parity["limit_top1_agreement"]) == (1e-4, 0.9995)


def test_force_exports_an_unchanged_checkpoint_again(first, forced):
    """FORCED asks for what v1 holds (its checkpoint, 100 test images, INT8 tried)."""
    assert forced.versions_after == ["1", "2"]
    assert forced.report(2)["checkpoint"]["sha256"] == first.report(1)["checkpoint"]["sha256"]
    assert forced.report(2)["parity"]["images"] == 100
    assert "unchanged since" not in forced.out and f"{ARCH} v2 <- " in forced.out


def test_the_variant_gate_flags_refuse_a_variant(forced):
    int8 = forced.variant(2, "int8")
    assert not int8["written"] and int8["file"] is None
    assert int8["reason"].startswith(f"gate missed with recipe {RECIPES[1]}: accuracy ")
    assert "points below fp32" in int8["reason"] and "(limit -1)" in int8["reason"]
    assert "top-1 agreement with fp32 100.00% < 101.00% on 100 test images" in int8["reason"]
    assert f"{ARCH}: int8 not written: {int8['reason']}" in forced.out.splitlines()
    assert entries(forced.folder(2)) == ["model.onnx", "report.json"]  # fp32 is still exported


def test_parity_limits_refuse_the_export_and_nothing_is_written(full, fmnist_dir, capsys):
    args = cli.get_args_parser().parse_args(
        ["--models", ARCH, "--artifacts", str(full.artifacts), "--data-dir", str(fmnist_dir),
         "--force", "--no-progress", "--max-abs-diff", "-1", "--min-agreement", "1.01"])
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {ARCH}: parity check failed, nothing written: max |Δ logits| ")
    assert "> -1; top-1 agreement 100.0000% < 101.0000%" in err
    arch_dir = full.artifacts / "models" / ARCH
    assert entries(arch_dir) == full.versions_after == ["1", "2"]


def test_help_explains_every_flag(later):
    result = later["help"].result
    assert result.returncode == 0 and result.stderr == ""
    text = " ".join(result.stdout.split())
    for flag in ("--models", "--artifacts", "--force", "--data-dir", "--opset", "--batch-size",
                 "--max-abs-diff", "--min-agreement", "--test-images", "--variants",
                 "--int8-max-drop", "--variant-min-agreement", "--variant-min-speedup",
                 "--calibration-images", "--int8-recipes", "--no-progress"):
        assert flag in text
    assert "--opset OPSET ONNX opset to export (18 at the lowest) (default: 20)" in text
    assert ("--variant-min-speedup X gate: a variant whose batch-32 speed on this machine is below "
            "X times fp32's is not written") in text
