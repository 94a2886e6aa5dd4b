"""Collectives for torchrun: where reductions run, what they return."""

import pytest
import torch
import torch.distributed as dist

from trainer import device
from trainer.device import World, all_reduce_sum, group_device


@pytest.mark.parametrize("backend, expected", [("nccl", torch.device("cuda", 1)),
                                               ("gloo", torch.device("cpu"))])
def test_reductions_run_on_the_process_groups_device(monkeypatch, backend, expected):
    """nccl reduces CUDA tensors only (CPU ones fail at the end of the first epoch), gloo CPU
    ones. No GPU or process group here: the backend and the current CUDA device are faked."""
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert group_device() == expected


def test_all_reduce_sum_in_a_real_gloo_group(tmp_path):
    """A one-process gloo group, with World claiming two ranks so the collective path runs:
    CPU and integer inputs come back as float64 CPU values."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        loss, hits, seen = all_reduce_sum(World(0, 2, "gloo"), torch.tensor(1.5), torch.tensor(7),
                                          torch.tensor(64.0))
    finally:
        dist.destroy_process_group()
    assert (float(loss), float(hits), float(seen)) == (1.5, 7.0, 64.0)
    assert {t.device.type for t in (loss, hits, seen)} == {"cpu"}


def test_single_process_needs_no_group():
    assert device.all_reduce_sum(World(), torch.tensor(2.0))[0] == 2.0


def test_a_one_process_torchrun_joins_its_process_group(monkeypatch):
    """`torchrun --nproc_per_node=1` sets WORLD_SIZE=1: the trainer still joins the group (on a
    GPU that is nccl, which `make gpu-check` runs through an epoch end), and collectives go
    through it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    world = device.init_world(torch.device("cpu"))
    try:
        assert (world.rank, world.size, world.backend, world.distributed) == (0, 1, "gloo", True)
        assert dist.is_initialized()
        assert float(all_reduce_sum(world, torch.tensor(3))[0]) == 3.0
    finally:
        dist.destroy_process_group()


def test_without_torchrun_there_is_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = device.init_world(torch.device("cpu"))
    assert not world.distributed and not dist.is_initialized()
