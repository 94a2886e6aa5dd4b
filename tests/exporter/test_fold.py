"""BatchNorm folding: hand-built modules for each rule, then every registered architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exporter.fold import fold_batchnorm
from exporter.testing import random_net
from trainer.models import ARCHITECTURES


def _randn(*shape: int) -> torch.Tensor:
    """Inputs that are the same on every run (a margin seen once is seen every time)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _prepared(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, _BatchNorm):
            m.reset_parameters()
    return _eps_sensitive_batchnorm(net, seed=1).eval()


def _eps_sensitive_batchnorm(net: nn.Module, seed: int) -> nn.Module:
    """Random statistics in which eps matters: running variances of 0.5-1.5e-4, so eps (1e-5)
    is 7-20 % of each and a fold that drops it is off by ~0.1 (not by 1e-5, as with variances
    near 1); scales of 0.5-1.5e-2 keep the outputs near 1. In place; returns `net`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, _BatchNorm)):
            n = bn.num_features
            if bn.track_running_stats:
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                bn.running_var.copy_((torch.rand(n, generator=g) + 0.5) * 1e-4)
            if bn.affine:
                bn.weight.copy_((torch.rand(n, generator=g) + 0.5) * 1e-2)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return net


def _without_eps(net: nn.Module) -> nn.Module:
    """A copy whose BatchNorms compute with eps = 0: what a fold that lost eps computes."""
    net = copy.deepcopy(net)
    for bn in (m for m in net.modules() if isinstance(m, _BatchNorm)):
        bn.eps = 0.0
    return net


def _assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, rtol: float = 0.0) -> None:
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=rtol, atol=1e-5)


def _assert_untouched(net: nn.Module, before: nn.Module) -> None:
    assert [type(m) for m in net.modules()] == [type(m) for m in before.modules()]
    after_state, before_state = net.state_dict(), before.state_dict()
    assert after_state.keys() == before_state.keys()
    for k in before_state:
        assert torch.equal(after_state[k], before_state[k]), k


class TwoUsers(nn.Module):
    """The conv output feeds the BatchNorm and a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(nn.Module):
    """One conv called twice, once before a BatchNorm: folding would change the other call too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize("net, x, into", [
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()), _randn(4, 3, 9, 9), "0"),
    (nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), _randn(4, 3, 9, 9), "0"),
    (nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.BatchNorm2d(8)), _randn(4, 4, 9, 9), "0"),
    (nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5)), _randn(4, 3, 11), "0"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6)), _randn(5, 3, 4), "1"),
    (nn.Sequential(nn.Linear(12, 6, bias=False), nn.BatchNorm1d(6, affine=False)),
     _randn(5, 12), "0"),
], ids=["conv", "conv-no-bias", "grouped-conv", "conv1d", "linear-bn1d", "linear-no-bias-no-affine"])
def test_foldable_pair_is_folded_and_computes_the_same(net, x, into):
    """Equal to 1e-5 of each output (without a BatchNorm scale, outputs reach ~100, where float32
    keeps that much), while a fold that lost eps is off by more than 1e-2."""
    net = _prepared(net)
    before = copy.deepcopy(net)
    result = fold_batchnorm(net)
    bn = str(int(into) + 1)
    assert [(f.bn, f.into) for f in result.folded] == [(bn, into)]
    assert result.remaining == ()
    assert isinstance(result.model.get_submodule(bn), nn.Identity)
    with torch.no_grad():
        assert (_without_eps(net)(x) - net(x)).abs().max() > 1e-2  # eps matters here
    _assert_same_function(net, result.model, x, rtol=1e-5)
    _assert_untouched(net, before)


@pytest.mark.parametrize("net, bn, reason", [
    (TwoUsers(), "bn", "the output of conv is also used by add"),
    (nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)), "2",
     "its input is the output of 1 (ReLU), not a Conv or Linear output"),
    (SharedConv(), "bn", "conv is called 2 times"),
    (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 3)), "0", "the model input"),
    (nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)), "1",
     "no running statistics"),
], ids=["two-users", "after-relu", "shared-conv", "pre-activation", "batch-statistics"])
def test_unfoldable_batchnorm_stays_and_is_reported_with_its_reason(net, bn, reason):
    net = _prepared(net)
    before = copy.deepcopy(net)
    result = fold_batchnorm(net)
    assert result.folded == ()
    assert [r.bn for r in result.remaining] == [bn]
    assert reason in result.remaining[0].reason
    assert isinstance(result.model.get_submodule(bn), _BatchNorm)
    _assert_same_function(net, result.model, _randn(2, 3, 8, 8))
    _assert_untouched(net, before)


def test_training_mode_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"eval mode \(call \.eval\(\)\)"):
        fold_batchnorm(net)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_folds_keeping_names_and_function(arch):
    net = random_net(arch)
    before = copy.deepcopy(net)
    result = fold_batchnorm(net)
    bn_names = {n for n, m in net.named_modules() if isinstance(m, _BatchNorm)}
    assert {f.bn for f in result.folded} | {r.bn for r in result.remaining} == bn_names
    if arch == "densenet":  # every BatchNorm but the stem's is pre-activation
        assert [f.bn for f in result.folded] == ["1"]
        assert all("not a Conv or Linear output" in r.reason for r in result.remaining)
    else:
        assert result.remaining == ()
    # Module names are kept: only the folded BatchNorms' entries leave the state dict.
    folded_keys = {k for k in net.state_dict() if k.rpartition(".")[0] in {f.bn for f in result.folded}}
    assert result.model.state_dict().keys() == net.state_dict().keys() - folded_keys
    side = ARCHITECTURES[arch].input_side
    x = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(0))
    _assert_same_function(net, result.model, x)
    _assert_untouched(net, before)
