"""The versioned writer: numbers, atomic writes, concurrent exporters, leftovers, permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter import versions
from harness.wait import until
from tests.conftest import REPO


def _files(data: bytes):
    return lambda version: {"model.onnx": data, "report.json": b'{"version": %d}' % version}


def test_versions_count_only_version_folders(tmp_path):
    assert versions.versions(tmp_path / "absent") == [] and versions.next_version(tmp_path) == 1
    for name in ("1", "3", "03", ".2.x.tmp", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert versions.versions(tmp_path) == [1, 3]
    assert versions.next_version(tmp_path) == 8  # a number whose name is taken is never reused


def test_publish_writes_all_files_under_the_next_version(tmp_path):
    arch_dir = tmp_path / "lenet"
    assert versions.publish(arch_dir, _files(b"m")) == (1, arch_dir / "1")
    assert sorted(os.listdir(arch_dir / "1")) == ["model.onnx", "report.json"]
    assert (arch_dir / "1" / "report.json").read_bytes() == b'{"version": 1}'
    assert versions.publish(arch_dir, _files(b"m")) == (2, arch_dir / "2")
    assert sorted(p for p in os.listdir(arch_dir) if p != versions.LOCK_FILE) == ["1", "2"]


def test_failed_publish_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(versions.os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk full"):
        versions.publish(tmp_path, _files(b"m"))
    assert os.listdir(tmp_path) == [versions.LOCK_FILE]


def waited_on(lock: Path) -> bool:
    """Whether a process or thread is queued for `lock`'s flock: /proc/locks lists each waiter as
    a "-> FLOCK" line with the file's device and inode."""
    st = lock.stat()
    key = f" {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any("-> FLOCK" in line and key in line
               for line in Path("/proc/locks").read_text().splitlines())


# An exporter that, once it has chosen its number, holds it until the other one is either queued
# for the lock (the lock works) or has chosen a number too (it does not: both chose the same one).
_EXPORTER = """
import pathlib, sys
from exporter import versions
from harness.wait import until
from tests.exporter.test_versions import waited_on
arch_dir, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
signals = arch_dir.parent
(signals / f"ready-{me}").touch()
until((signals / "go").exists, 60, "the test's go", every=0.01)
def files(version):
    (signals / f"chosen-{me}").touch()
    until(lambda: waited_on(arch_dir / versions.LOCK_FILE) or (signals / f"chosen-{other}").exists(),
          60, f"{other} queued for the lock, or its number chosen too", every=0.01)
    return {"model.onnx": me.encode()}
print(versions.publish(arch_dir, files)[0])
"""


def test_two_concurrent_exporters_get_different_versions(tmp_path):
    arch_dir = tmp_path / "models" / "lenet"
    arch_dir.parent.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _EXPORTER, str(arch_dir), me, other],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]

    def ready() -> bool:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        return all((tmp_path / "models" / f"ready-{me}").exists() for me in "ab")

    until(ready, 60, "both exporters started", every=0.01)
    (tmp_path / "models" / "go").touch()
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    assert sorted(int(out) for out, _ in results) == [1, 2]
    written = {(arch_dir / out.strip() / "model.onnx").read_text() for out, _ in results}
    assert written == {"a", "b"}


def test_stale_temporary_folders_are_removed(tmp_path):
    for name in (".3.k2j4.tmp", ".4.1234.tmp", "3", ".notes", ".5.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / ".3.k2j4.tmp" / "model.onnx").write_bytes(b"half a model")
    assert versions.remove_stale(tmp_path) == [".3.k2j4.tmp", ".4.1234.tmp"]
    assert sorted(os.listdir(tmp_path)) == sorted([".5.tmp", ".notes", versions.LOCK_FILE, "3"])
    assert versions.remove_stale(tmp_path / "absent") == []


def test_a_live_exporters_temporary_folder_is_left_alone(tmp_path):
    removed = []
    with versions.locked(tmp_path):  # an exporter between its mkdir and its rename
        (tmp_path / ".1.999.tmp").mkdir()
        cleaner = threading.Thread(target=lambda: removed.extend(versions.remove_stale(tmp_path)),
                                   daemon=True)
        cleaner.start()
        deadline = time.monotonic() + 60
        while not waited_on(tmp_path / versions.LOCK_FILE):  # the cleaner, queued for the lock
            assert cleaner.is_alive(), f"remove_stale did not wait for the lock: removed {removed}"
            assert time.monotonic() < deadline, "the cleaner never asked for the lock"
            cleaner.join(0.01)
        assert cleaner.is_alive() and (tmp_path / ".1.999.tmp").is_dir()
        os.rename(tmp_path / ".1.999.tmp", tmp_path / "1")
    cleaner.join(10)
    assert removed == [] and (tmp_path / "1").is_dir()


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o002, 0o755, 0o644),
                                                 (0o077, 0o700, 0o600)])
def test_published_versions_are_readable_as_the_umask_allows(tmp_path, umask, folder, file):
    """A server running as another user must read the files; nobody else may change them."""
    old = os.umask(umask)
    try:
        _, path = versions.publish(tmp_path / "lenet", _files(b"m"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder
    for name in ("model.onnx", "report.json"):
        assert stat.S_IMODE((path / name).stat().st_mode) == file
