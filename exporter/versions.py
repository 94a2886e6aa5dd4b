"""Versioned, atomic publishing: artifacts/models/<arch>/<N>/{model.onnx, report.json}.

A server scans these folders while the exporter writes, so a version folder appears whole or not
at all: its files are written and fsynced under a hidden temporary name beside it, then the folder
is renamed into place (atomic within one filesystem). Only folders named by an integer are versions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from exporter.errors import ExportError

MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"


def versions(arch_dir: Path) -> list[int]:
    """The published versions, oldest first."""
    if not arch_dir.is_dir():
        return []
    return sorted(int(p.name) for p in arch_dir.iterdir()
                  if p.name.isascii() and p.name.isdigit() and p.is_dir())


def next_version(arch_dir: Path) -> int:
    return max(versions(arch_dir), default=0) + 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(arch_dir: Path, version: int, files: dict[str, bytes]) -> Path:
    """Write `files` as version `version` of `arch_dir`, all at once; on failure nothing is left."""
    arch_dir.mkdir(parents=True, exist_ok=True)
    final = arch_dir / str(version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=arch_dir))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # another exporter took this number meanwhile: never overwrite it
            raise ExportError(f"{final} appeared while exporting (a second exporter?); "
                              f"nothing written, run the export again")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(arch_dir)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
