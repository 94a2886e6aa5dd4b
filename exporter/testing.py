"""Stand-ins for a trained network, for the tests and the benchmark: random weights whose
BatchNorm layers carry non-trivial statistics (a fresh BatchNorm is the identity, which would
let a wrong fold pass), and checkpoints in the trainer's format (docs/DESIGN.md, "Checkpoints")."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer import checkpoint, models


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics, scale and shift, in place; returns `net`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, _BatchNorm)):
            n = bn.num_features
            if bn.track_running_stats:
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            if bn.affine:
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return net


def random_net(arch: str, seed: int = 0) -> nn.Module:
    """`arch` with seeded random weights and non-trivial BatchNorm, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = models.build(arch)
    return randomize_batchnorm(net, seed).eval()


def write_checkpoint(net: nn.Module, arch: str, path: Path, /, **fields) -> Path:
    """A best.pt as the trainer writes it, with the keys the exporter reads; `fields` add or
    override keys (e.g. test_accuracy, or a wrong arch for a test)."""
    checkpoint.save_atomic({
        "format": checkpoint.FORMAT, "arch": arch, "input_side": models.get(arch).input_side,
        "model": net.state_dict(), "epoch": 0, "step": 0, "test_accuracy": None,
        "torch_version": str(torch.__version__)} | fields, path)
    return path
