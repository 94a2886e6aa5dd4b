"""`python -m exporter` end to end, from a checkpoint the trainer itself wrote in a few steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest

from exporter.cli import get_args_parser, main
from tests.conftest import REPO


def _run(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_dir):
    """artifacts/checkpoints/lenet_bn/{last,best}.pt from one short epoch of the real trainer."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    run = _run("trainer", "--models", "lenet_bn", "--epochs", "1", "--limit-train", "256",
               "--data-dir", str(fmnist_dir), "--artifacts", str(artifacts), "--device", "cpu",
               "--precision", "fp32", "--no-progress")
    assert run.returncode == 0, run.stderr
    return artifacts


def test_every_flag_has_help():
    parser = get_args_parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.dest
        assert all(opt in text for opt in action.option_strings)


def test_trained_checkpoint_exports_once_then_is_skipped(trained, fmnist_dir, capsys):
    run = _run("exporter", "--artifacts", str(trained), "--data-dir", str(fmnist_dir),
               "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "lenet_bn v1 <- " in run.stdout and "BatchNorm: 4 folded, 0 remaining" in run.stdout
    model_path = trained / "models" / "lenet_bn" / "1" / "model.onnx"
    report = json.loads(model_path.with_name("report.json").read_text())
    meta = {p.key: p.value for p in onnx.load(model_path).metadata_props}
    assert meta["fmnist.test_accuracy"] == f"{report['parity']['onnx_accuracy']:.4f}"
    assert report["checkpoint"]["epoch"] == 1
    # The trainer measured the same network on the same 256 images in PyTorch fp32 (its own
    # preprocessing, channels-last): at most a near-tie may flip.
    assert report["parity"]["torch_accuracy"] == pytest.approx(
        report["checkpoint"]["test_accuracy"], abs=1 / 256)

    args = get_args_parser().parse_args(["--artifacts", str(trained), "--data-dir", str(fmnist_dir)])
    assert main(args) == 0
    assert "unchanged since version 1" in capsys.readouterr().out
    assert sorted(p.name for p in model_path.parent.parent.iterdir()) == ["1"]


def test_a_failing_architecture_fails_the_run_but_not_the_others(trained, fmnist_dir, tmp_path,
                                                                  capsys):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained / "checkpoints", artifacts / "checkpoints")
    shutil.copytree(artifacts / "checkpoints" / "lenet_bn", artifacts / "checkpoints" / "mystery")
    args = get_args_parser().parse_args(["--artifacts", str(artifacts), "--data-dir",
                                         str(fmnist_dir), "--no-progress"])
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "error: " in err
    assert "mystery/best.pt: 'mystery' is not an architecture trainer/models.py registers" in err
    assert (artifacts / "models" / "lenet_bn" / "1" / "model.onnx").is_file()
    assert not (artifacts / "models" / "mystery").exists()
    assert "FAILED" in out


def test_no_checkpoint_at_all_is_a_one_line_error(tmp_path, capsys):
    assert main(get_args_parser().parse_args(["--artifacts", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `make train` first" in err


@pytest.mark.parametrize("flags, message", [
    (["--opset", "17"], "--opset 17: torch.onnx exports opset 18 and up"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_flag_values_are_refused_before_any_work(tmp_path, capsys, flags, message):
    assert main(get_args_parser().parse_args(["--artifacts", str(tmp_path), *flags])) == 2
    assert message in capsys.readouterr().err


def test_missing_data_stops_the_run_with_its_message(trained, tmp_path, capsys):
    args = get_args_parser().parse_args(["--artifacts", str(trained), "--force",
                                         "--data-dir", str(tmp_path / "nowhere")])
    assert main(args) == 1
    assert "nowhere has no train-images-idx3-ubyte" in capsys.readouterr().err
