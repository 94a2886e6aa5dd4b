"""Checkpoints that describe themselves and are never left half-written.

A checkpoint is a dict of plain types and tensors (loadable with `weights_only=True`): arch,
model/optimizer/scheduler state, epoch, step, metrics history, recipe, seed, RNG state, torch
version. It is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one, so a crash at any point leaves either the old checkpoint or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


class CheckpointError(ValueError):
    """The file is not a readable fmnist-serve checkpoint: truncated, empty, or another format."""


def checkpoint_dir(artifacts: str | os.PathLike, arch: str) -> Path:
    return Path(artifacts) / "checkpoints" / arch


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
         mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: plain data and tensors, never pickled code."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # by where the file breaks: OSError, EOFError, KeyError, Runtime...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, empty or another "
                              f"format: {_first_sentence(err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not an fmnist-serve checkpoint (format {FORMAT})")
    return ckpt


def _first_sentence(err: Exception) -> str:
    """torch's load errors run over many lines and sentences; the first names the problem."""
    text = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
