"""Versioned, atomic publishing: artifacts/models/<arch>/<N>/{model.onnx, report.json}.

A server scans these folders while the exporter writes, so a version folder appears whole or not
at all: its files are written and fsynced under a hidden temporary name beside it (`.N.<pid>.tmp`),
then the folder is renamed into place (atomic within one filesystem). Only folders named by
`model_contract.parse_version` are versions.

Several exporters may publish into one arch folder at once (two terminals, a cron job): each
chooses its number, writes and renames while holding an flock on the folder's `.lock` file, so
they get different numbers and neither fails. The same lock tells a leftover temporary folder
(an exporter killed mid-write) from a live one: a live exporter only has one while holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import model_contract as contract

LOCK_FILE = ".lock"
# Published folders and files are readable by the server's user and writable by nobody else (a
# version never changes); the umask can only narrow these (0o077 keeps them private).
_FOLDER_MODE = 0o755
_FILE_MODE = 0o644


def versions(arch_dir: Path) -> list[int]:
    """The published versions, oldest first."""
    if not arch_dir.is_dir():
        return []
    return sorted(v for p in arch_dir.iterdir()
                  if (v := contract.parse_version(p.name)) is not None and p.is_dir())


def next_version(arch_dir: Path) -> int:
    """One past every name that is a version number, folder or not: a rename onto a taken name
    would fail (a file) or replace it (an empty folder)."""
    if not arch_dir.is_dir():
        return 1
    taken = (contract.parse_version(p.name) for p in arch_dir.iterdir())
    return max((v for v in taken if v is not None), default=0) + 1


def unwritable(arch_dir: Path) -> str | None:
    """Why `publish` could not write under `arch_dir`, or None when it can: asked before an export
    that may take minutes, and leaving nothing behind (no folder is created). The nearest folder
    that exists must be a writable folder; a file on the way is named."""
    path = arch_dir
    while not path.exists() and path != path.parent:
        if path.is_symlink():
            return f"{path} is a broken symbolic link"
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder: move it away or point --artifacts elsewhere"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"cannot write in {path} (permission denied): fix its permissions or point " \
               f"--artifacts elsewhere"
    return None


@contextlib.contextmanager
def locked(arch_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of `arch_dir` (created if missing); the kernel releases it when the
    process dies, so a killed exporter never leaves it taken."""
    arch_dir.mkdir(parents=True, exist_ok=True)
    with open(arch_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def publish(arch_dir: Path, files_for: Callable[[int], dict[str, bytes]]) -> tuple[int, Path]:
    """Write `files_for(version)` as the next version of `arch_dir`, all at once, and return the
    version and its folder; on failure nothing is left. The number is only known under the lock,
    which is why the files (report.json names its version) are asked for then."""
    with locked(arch_dir):
        version = next_version(arch_dir)
        files = files_for(version)
        final = arch_dir / str(version)
        tmp = arch_dir / f".{version}.{os.getpid()}.tmp"
        os.mkdir(tmp, _FOLDER_MODE)
        try:
            for name, data in files.items():
                _write(tmp / name, data)
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(arch_dir)
    return version, final


def remove_stale(arch_dir: Path) -> list[str]:
    """Remove the temporary folders of exporters that died before their rename (killed, out of
    memory, power cut) and return their names. Taking the lock first waits for a live exporter's
    rename, so whatever temporary folder is left then belongs to nobody."""
    if not arch_dir.is_dir():
        return []
    with locked(arch_dir):
        stale = sorted(p for p in arch_dir.iterdir()
                       if _is_temporary(p.name) and p.is_dir() and not p.is_symlink())
        for path in stale:
            shutil.rmtree(path)
    return [p.name for p in stale]


def _is_temporary(name: str) -> bool:
    """`.N.<anything>.tmp`: the name `publish` builds under, whatever follows the number."""
    number, dot, rest = name[1:].partition(".")
    return (name.startswith(".") and name.endswith(".tmp") and len(rest) > len(".tmp")
            and dot == "." and contract.parse_version(number) is not None)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
