"""`python -m exporter` end to end, from a checkpoint the trainer itself wrote in a few steps
(the flags one by one: test_flags.py; bad input, failing architectures and crashes:
test_failures.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from exporter import versions
from exporter.cli import get_args_parser, main
from tests.conftest import REPO
from tests.exporter import written
from trainer import data as fmnist


def _run(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_dir):
    """artifacts/checkpoints/lenet_bn/{last,best}.pt from one short epoch of the real trainer: 16
    steps of 32 images, which reach ~0.8 on the synthetic test set. Fewer (one epoch of 256 at the
    recipe's batch) leave a network that answers one class for every image, and the accuracy of
    such a network cannot tell a wrong measurement from a right one."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    run = _run("trainer", "--models", "lenet_bn", "--epochs", "1", "--limit-train", "512",
               "--batch-size", "32", "--data-dir", str(fmnist_dir), "--artifacts", str(artifacts),
               "--device", "cpu", "--precision", "fp32", "--no-progress")
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
    test = fmnist.load(fmnist_dir)
    accuracy = written.accuracy(model_path, test.test_images.numpy(), test.test_labels.numpy())
    assert 0.3 < accuracy < 1  # not one class for every image, not every image right
    assert written.metadata(model_path)["fmnist.test_accuracy"] == f"{accuracy:.4f}"
    assert report["checkpoint"]["epoch"] == 1
    # The trainer measured the same network on the same 256 images in PyTorch fp32 (its own
    # preprocessing, channels-last): at most a near-tie may flip.
    assert report["parity"]["torch_accuracy"] == pytest.approx(
        report["checkpoint"]["test_accuracy"], abs=1 / 256)

    args = get_args_parser().parse_args(["--artifacts", str(trained), "--data-dir", str(fmnist_dir)])
    assert main(args) == 0
    sha = report["checkpoint"]["sha256"]
    assert (f"lenet_bn: {trained / 'checkpoints' / 'lenet_bn' / 'best.pt'} unchanged since "
            f"version 1 (sha256 {sha[:12]}); skipped, --force exports it again"
            ) in capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in model_path.parent.parent.iterdir()) == [versions.LOCK_FILE, "1"]


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
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(tmp_path / "nowhere") in err
