"""Checkpoints: plain data loadable with weights_only=True, and never half-written."""

import subprocess
import sys
import textwrap

import pytest
import torch

from trainer import checkpoint


def _ckpt(value: float) -> dict:
    return {"format": checkpoint.FORMAT, "arch": "lenet", "model": {"w": torch.full((3,), value)}}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "c" / "last.pt"
    checkpoint.save_atomic(_ckpt(1.5), path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.5))
    assert checkpoint.load(path)["arch"] == "lenet"


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"something": 1}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not an fmnist-serve checkpoint"):
        checkpoint.load(path)


def test_an_exception_during_the_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_ckpt(1.0), path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic(_ckpt(2.0), path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.full((3,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_process_killed_during_the_write_keeps_the_old_checkpoint(tmp_path):
    """A real crash: the writing process dies (os._exit) halfway through torch.save."""
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_ckpt(1.0), path)
    script = textwrap.dedent(f"""
        import os, torch
        from trainer import checkpoint
        real_save = torch.save
        def dying_save(obj, f):
            f.write(b"x" * 1000)
            f.flush()
            os._exit(9)
        torch.save = dying_save
        checkpoint.save_atomic({{"format": 1, "arch": "lenet", "model": {{}}}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.full((3,), 1.0))
