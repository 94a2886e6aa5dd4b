"""`python -m trainer` as a user (and torchrun) runs it: --help, --list, the errors a person
can act on, Ctrl-C and --resume, two processes. Each other flag is observed in test_flags.py."""

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.conftest import IDX_NAMES, REPO
from tests.trainer.cli_runs import (TRAINER, epoch_lines, error_line, run_trainer,
                                    run_two_ranks, trainer_env)
from trainer import checkpoint, models
from trainer.cli import get_args_parser, main, run


def test_help_keeps_each_example_on_its_lines():
    """The example continued with a backslash stays two lines; a lost line break showed as a
    run of spaces inside one."""
    result = run_trainer("--help")
    assert result.returncode == 0, result.stderr
    examples = result.stdout.split("Examples:\n")[1].split("\n\n")[0].splitlines()
    assert len(examples) >= 5
    for line in examples:
        assert not re.search(r"\S {2,}-", line), line
    continued = [i for i, line in enumerate(examples) if line.endswith(" \\")]
    assert continued, examples
    for i in continued:
        indent = len(examples[i]) - len(examples[i].lstrip())
        follow = examples[i + 1]
        assert follow.lstrip().startswith("--") and len(follow) - len(follow.lstrip()) > indent
    text = " ".join(result.stdout.split())
    assert text.count("(default: 500)") == 1  # --eval-batch-size's, shown once
    assert "(default: d2l)" in text and "(default: auto)" in text


def test_list_shows_every_architecture():
    result = run_trainer("--list")
    assert result.returncode == 0, result.stderr
    for name, spec in models.ARCHITECTURES.items():
        assert name in result.stdout and str(spec.input_side) in result.stdout
    assert "46.76" in result.stdout  # alexnet's parameter count, computed


def test_an_unknown_architecture_names_the_valid_ones():
    result = run_trainer("--models", "resnet19")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "error:" in x]
    assert "argument --models: invalid choice: 'resnet19'" in line
    assert all(name in line for name in models.ARCHITECTURES)


def test_missing_cuda_is_one_error_line(tmp_path, fmnist_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path needs one without")
    cuda = run_trainer("--models", "lenet", "--device", "cuda", "--data-dir", str(fmnist_dir),
                       "--artifacts", str(tmp_path))
    assert cuda.returncode == 2
    assert error_line(cuda).startswith("error: --device cuda, but torch sees no")


def _bad_data_dir(kind: str, tmp_path: Path, fmnist_dir: Path) -> tuple[Path, str]:
    """A --data-dir that cannot be read, and what the error line must say about it."""
    if kind == "missing":
        return tmp_path / "nowhere", f"error: --data-dir {tmp_path / 'nowhere'}: no such folder"
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for name in IDX_NAMES.values():
        (folder / name).write_bytes((fmnist_dir / name).read_bytes())
    labels = folder / IDX_NAMES[("train", "labels")]
    labels.write_bytes(labels.read_bytes()[:-100])  # a truncated gzip stream
    return folder, f"error: {labels}: "


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_a_data_dir_that_cannot_be_read_is_one_error_line(tmp_path, fmnist_dir, kind):
    folder, expected = _bad_data_dir(kind, tmp_path, fmnist_dir)
    result = run_trainer("--models", "lenet", "--data-dir", str(folder), "--artifacts",
                         str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 2
    assert error_line(result).startswith(expected), result.stderr


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_an_artifacts_folder_that_cannot_be_written_is_refused_before_training(
        tmp_path, fmnist_dir, kind):
    """Found before the data is loaded, not by the first checkpoint after an epoch's training."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    artifacts = blocker if kind == "a file" else tmp_path / "read-only"
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        artifacts.mkdir(mode=0o555)
    result = run_trainer("--models", "lenet", "lenet_bn", "--data-dir", str(fmnist_dir),
                         "--artifacts", str(artifacts), "--device", "cpu")
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"error: --artifacts {artifacts}: cannot write ") and "lenet" in line
    assert "Fashion-MNIST from" not in result.stderr and "epoch" not in result.stderr


@pytest.mark.slow
def test_two_process_gloo_ddp_writes_one_checkpoint(tmp_path, fmnist_dir):
    result = run_two_ranks("-m", "trainer", "--models", "lenet_bn", "--epochs", "1",
                           "--batch-size", "64", "--data-dir", str(fmnist_dir), "--artifacts",
                           str(tmp_path), "--device", "cpu", "--no-progress", artifacts=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckdir = tmp_path / "checkpoints/lenet_bn"
    assert sorted(p.name for p in ckdir.iterdir()) == ["best.pt", "last.pt"]
    ck = checkpoint.load(ckdir / "last.pt")
    assert ck["config"]["world_size"] == 2
    assert ck["step"] == 512 // 64  # the global batch is split, not duplicated, over the ranks
    assert len(list((tmp_path / "runs/lenet_bn").glob("*.jsonl"))) == 1
    assert result.stdout.count("lenet_bn") == 1  # one summary, from rank 0


def test_ctrl_c_saves_last_pt_and_resume_continues(tmp_path, fmnist_dir):
    """SIGINT mid-run: the step finishes, last.pt is written, exit status 130; --resume goes on."""
    args = ["--models", "lenet_bn", "--epochs", "1000", "--batch-size", "64", "--data-dir",
            str(fmnist_dir), "--artifacts", str(tmp_path), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen([*TRAINER, *args], cwd=REPO, env=trainer_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(240, proc.kill)  # a log line that never comes fails, not hangs
    watchdog.start()
    for line in proc.stderr:  # wait until training is under way
        if epoch_lines(line, "lenet_bn") == [(2, 1000, None, None)]:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    watchdog.cancel()
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    last = checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")
    assert last["step"] >= 16
    resumed = run_trainer(*args[:2], "--epochs", str(last["epoch"] + 1), *args[4:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at epoch {last['epoch']}, step {last['step']}" in resumed.stderr
    assert checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")["epoch"] == last["epoch"] + 1


def test_resume_keeps_the_checkpoints_epochs_unless_epochs_is_given(tmp_path, fmnist_dir):
    """A run asked for 2 epochs and stopped after one step; --resume without --epochs finishes
    those 2 (not the recipe's 10, which would also stretch its LR schedule mid-run); --epochs 3
    then extends it."""
    base = ["--models", "lenet", "--limit-train", "512", "--data-dir", str(fmnist_dir),
            "--artifacts", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(get_args_parser().parse_args([*base, "--epochs", "2", "--time-budget", "0"])) == 0
    last = tmp_path / "checkpoints/lenet/last.pt"
    assert checkpoint.load(last)["step"] == 1
    assert main(get_args_parser().parse_args([*base, "--resume"])) == 0
    ck = checkpoint.load(last)
    assert (ck["recipe"]["epochs"], ck["epoch"], ck["step"]) == (2, 2, 4)
    assert main(get_args_parser().parse_args([*base, "--resume", "--epochs", "3"])) == 0
    ck = checkpoint.load(last)
    assert (ck["recipe"]["epochs"], ck["epoch"], ck["step"]) == (3, 3, 6)


def _broken_last_pt(kind: str, path: Path) -> None:
    if kind == "truncated":
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "arch": "lenet",
                                "model": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[:20_000])
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if kind == "empty" else b"not a checkpoint\n" * 20)


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_an_unreadable_last_pt_at_resume_is_one_error_line(tmp_path, fmnist_dir, kind):
    """Exit 2 (the command cannot run as asked, like missing data), one line, no traceback."""
    last = tmp_path / "checkpoints/lenet/last.pt"
    _broken_last_pt(kind, last)
    result = run_trainer("--models", "lenet", "--resume", "--data-dir", str(fmnist_dir),
                         "--artifacts", str(tmp_path), "--device", "cpu", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: cannot resume lenet: {last} is not a readable checkpoint")
    assert "without --resume" in line


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug")])
def test_an_internal_error_is_a_traceback_not_a_bad_argument(tmp_path, fmnist_dir, monkeypatch,
                                                            bug):
    """Only UsageError (argument validation, unusable inputs) is exit 2 with one line; a
    ValueError or KeyError from inside a run propagates (Python prints it, exit 1)."""
    def evaluate(*args, **kwargs):
        raise bug

    monkeypatch.setattr("trainer.run.evaluate", evaluate)
    monkeypatch.setattr(sys, "argv", ["trainer", "--models", "lenet", "--epochs", "1",
                                      "--limit-train", "256", "--data-dir", str(fmnist_dir),
                                      "--artifacts", str(tmp_path), "--device", "cpu",
                                      "--no-progress"])
    with pytest.raises(type(bug), match="a bug"):
        run()
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--limit-train", "10"])
    with pytest.raises(SystemExit) as usage:  # while a bad argument is still exit 2
        run()
    assert usage.value.code == 2
