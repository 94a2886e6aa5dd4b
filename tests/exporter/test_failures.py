"""Bad input on the command line of `python -m exporter`, and a crash in the middle of an export:
one clear line per problem, a non-zero exit, and nothing half-written in the models folder (a
version is published by renaming a finished temporary folder).

The runs use folders of their own and start side by side (`runs`); AFTER_CRASH starts when the
crash whose leftovers it finds has ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from exporter.testing import random_net, write_checkpoint
from tests.exporter.cli_runs import entries, error_lines, finish, start_exporter, with_file_limit
from trainer import checkpoint
from trainer.models import ARCHITECTURES

ARCH = "lenet_bn"
FILE_LIMIT = 64 * 1024  # bytes: below lenet_bn's model.onnx (~240 KB), above all it writes before
IN_THE_WAY = "a file where lenet's versions should go"


def _checkpoint(artifacts: Path, arch: str = ARCH) -> Path:
    return write_checkpoint(random_net(arch), arch,
                            checkpoint.checkpoint_dir(artifacts, arch) / "best.pt")


def _make_read_only(models: Path) -> bool:
    """`models` made read-only to this user: mode 0555, or for root (who writes in any mode) the
    immutable attribute, where the filesystem and the container allow it. False: not possible."""
    models.mkdir()
    if os.geteuid() != 0:
        models.chmod(0o555)
        return True
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(models)], capture_output=True).returncode == 0


def _undo_read_only(models: Path) -> None:
    if os.geteuid() != 0:
        models.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(models)], capture_output=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist_dir):
    """name -> (artifacts, finished run) for every case but AFTER_CRASH."""
    root = tmp_path_factory.mktemp("failures")
    data = ("--data-dir", str(fmnist_dir), "--no-progress")
    cases = {
        "bad_checkpoints": (("--models", "lenet", ARCH, *data), ()),
        "unknown_arch": (("--models", "mystery"), ()),
        "bad_value": (("--variant-min-speedup", "0"), ()),
        "read_only": (("--models", ARCH, *data), ()),
        "disk_full": (("--models", ARCH, *data), with_file_limit(FILE_LIMIT, killed=False)),
        "crash": (("--models", ARCH, *data), with_file_limit(FILE_LIMIT, killed=True)),
    }
    folders = {name: root / name for name in cases}
    for name in ("bad_checkpoints", "read_only", "disk_full", "crash"):
        _checkpoint(folders[name])
    ckpt = checkpoint.checkpoint_dir(folders["bad_checkpoints"], ARCH) / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])  # a copy cut short, as a full disk leaves it
    if not _make_read_only(folders["read_only"] / "models"):
        del cases["read_only"]
    started = {name: start_exporter(*flags, "--artifacts", str(folders[name]),
                                    **({"launcher": launcher} if launcher else {}))
               for name, (flags, launcher) in cases.items()}
    try:
        done = {"crash": (folders["crash"], finish(started.pop("crash")))}
        arch_dir = folders["crash"] / "models" / ARCH
        crash_left = {str(p.relative_to(arch_dir)): p.stat().st_size if p.is_file() else None
                      for p in arch_dir.rglob("*")}
        done["crash_left"] = (folders["crash"], crash_left)
        after = _start_after_crash(folders["crash"], fmnist_dir)  # while the others still run
        done |= {name: (folders[name], finish(proc)) for name, proc in started.items()}
        done["after_crash"] = (folders["crash"], finish(after))
        yield done
    finally:
        _undo_read_only(folders["read_only"] / "models")


def test_a_missing_and_a_corrupt_checkpoint_are_one_line_each(runs):
    artifacts, result = runs["bad_checkpoints"]
    assert result.returncode == 1
    missing, corrupt = error_lines(result)
    assert missing == (f"error: {artifacts}/checkpoints/lenet/best.pt not found: run `make train "
                       f"MODELS=lenet` first (or point --artifacts at the folder that holds "
                       f"checkpoints/)")
    ckpt = checkpoint.checkpoint_dir(artifacts, ARCH) / "best.pt"
    assert corrupt.startswith(f"error: cannot read {ckpt} (torch.load with weights_only=True): ")
    assert corrupt.endswith(f"; retrain with `make train MODELS={ARCH}`")
    assert entries(artifacts / "models" / ARCH) == [] and entries(artifacts / "models" / "lenet") == []


def test_an_unknown_architecture_is_one_line(runs):
    artifacts, result = runs["unknown_arch"]
    assert result.returncode == 2 and result.stdout == ""
    [line] = error_lines(result)
    assert line.startswith("python -m exporter: error: argument --models: invalid choice: "
                           "'mystery' (choose from ") and line.endswith(" (see --help)")
    assert all(arch in line for arch in ARCHITECTURES)
    assert not (artifacts / "models").exists()


def test_a_bad_flag_value_is_one_line(runs):
    _, result = runs["bad_value"]
    assert result.returncode == 2
    assert error_lines(result) == ["error: --variant-min-speedup must be above 0 (1: as fast as "
                                   "fp32)"]


def test_a_models_folder_that_cannot_be_written_is_refused_before_any_work(runs):
    if "read_only" not in runs:
        pytest.skip("running as root without chattr +i: no folder is read-only to this user")
    artifacts, result = runs["read_only"]
    assert result.returncode == 1
    assert error_lines(result) == [
        f"error: {ARCH}: not exported: cannot write in {artifacts / 'models'} (permission "
        f"denied): fix its permissions or point --artifacts elsewhere"]
    assert "test images:" not in result.stdout  # refused before the data was read
    assert entries(artifacts / "models") == []


def test_a_write_that_fails_is_one_line_and_leaves_nothing(runs):
    artifacts, result = runs["disk_full"]
    assert result.returncode == 1
    assert error_lines(result) == [f"error: {ARCH}: not exported: [Errno 27] File too large"]
    assert entries(artifacts / "models" / ARCH) == []


def test_a_crash_mid_write_leaves_no_version_folder(runs):
    artifacts, crashed = runs["crash"]
    _, left = runs["crash_left"]  # what the crash left, before AFTER_CRASH cleaned it up
    assert crashed.returncode == -signal.SIGXFSZ, crashed.stderr[-3000:]
    [leftover] = [name for name in left if name.endswith(".tmp")]
    assert leftover.startswith(".1.")  # the temporary folder, its model.onnx cut at the limit
    assert left == {".lock": 0, leftover: None, f"{leftover}/model.onnx": FILE_LIMIT}  # no "1"


def _start_after_crash(artifacts: Path, fmnist_dir: Path):
    """AFTER_CRASH: the crash's folder run again with every architecture found by its checkpoint:
    lenet's versions folder is taken by a file, `mystery` is no registered architecture, lenet_bn
    has the crash's leftovers. stderr goes into stdout, to see the order of the lines."""
    _checkpoint(artifacts, "lenet")
    shutil.copytree(checkpoint.checkpoint_dir(artifacts, ARCH),
                    checkpoint.checkpoint_dir(artifacts, "mystery"))
    (artifacts / "models" / "lenet").write_text(IN_THE_WAY)
    return start_exporter("--artifacts", str(artifacts), "--data-dir", str(fmnist_dir),
                          "--no-progress", merge_output=True)


@pytest.fixture(scope="module")
def after_crash(runs):
    artifacts, result = runs["after_crash"]
    return artifacts, result


def test_the_next_run_removes_the_crashs_leftovers_and_publishes(runs, after_crash):
    artifacts, result = after_crash
    [leftover] = [name for name in runs["crash_left"][1] if name.endswith(".tmp")]
    arch_dir = artifacts / "models" / ARCH
    assert (f"{ARCH}: removed 1 temporary folder(s) left by an exporter that did not finish: "
            f"{leftover}") in result.stdout.splitlines()
    assert entries(arch_dir) == ["1"]
    assert entries(arch_dir / "1") == ["model.onnx", "report.json"]


def test_each_failing_architecture_is_one_line_and_the_others_still_run(after_crash):
    artifacts, result = after_crash
    assert result.returncode == 1 and "Traceback" not in result.stdout
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        f"error: lenet: not exported: {artifacts / 'models' / 'lenet'} is a file, not a folder: "
        f"move it away or point --artifacts elsewhere",
        f"error: {artifacts}/checkpoints/mystery/best.pt: 'mystery' is not an architecture "
        f"trainer/models.py registers (known: {', '.join(ARCHITECTURES)})"]
    assert lines[0] == errors[0]  # lenet refused before the data was read for lenet_bn
    assert (artifacts / "models" / "lenet").read_text() == IN_THE_WAY
    assert not (artifacts / "models" / "mystery").exists()
    table = lines[-5:]
    assert [row.split()[:2] for row in table[2:]] == [["lenet", "FAILED"], ["lenet_bn", "written"],
                                                      ["mystery", "FAILED"]]
