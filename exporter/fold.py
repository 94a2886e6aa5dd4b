"""BatchNorm folding on the PyTorch modules: a pure function, model in, folded copy out.

In eval mode a BatchNorm is a per-channel affine map, y = (x - mean) / sqrt(var + eps) * w + b.
When x comes straight from a Conv or Linear whose output nobody else reads, that map can be moved
into the layer's weight and bias, and the BatchNorm disappears from the served graph. Any other
BatchNorm must stay, and the caller is told which and why (DenseNet's pre-activation BN -> ReLU ->
Conv normalises the *input* of its conv: there is no preceding layer to fold it into).

The producer/user relations come from a torch.fx trace of the model; the edits are made on a deep
copy by module name (the conv/linear gets the fused weights, the BatchNorm becomes nn.Identity), so
the copy keeps the model's own classes and forward code, and its state-dict names.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Folded:
    bn: str     # module name of the BatchNorm that became nn.Identity
    into: str   # module name of the Conv/Linear that absorbed it


@dataclass(frozen=True)
class Remaining:
    bn: str
    reason: str


@dataclass(frozen=True)
class FoldResult:
    model: nn.Module
    folded: tuple[Folded, ...]
    remaining: tuple[Remaining, ...]


def fold_batchnorm(model: nn.Module) -> FoldResult:
    """A copy of `model` (in eval mode) with every foldable BatchNorm folded; `model` is untouched.

    Folds a BatchNorm when its input is the output of a Conv1d/2d/3d or a Linear, that output
    has no other user, and both modules are called exactly once (folding a shared module would
    change its other calls). Linear -> BatchNorm1d assumes [N, features]
    activations, as in every registered architecture; the exporter's parity check would catch a
    [N, C, L] BatchNorm1d after a Linear, which normalises another axis.
    """
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fold_batchnorm needs a model in eval mode (call .eval()); in training "
                         f"mode BatchNorm uses batch statistics, which folding cannot keep "
                         f"({training[0]} is training)")
    pairs, remaining = _plan(model)
    folded_model = copy.deepcopy(model)
    with torch.no_grad():
        for bn_name, layer_name in pairs:
            _fuse_into(folded_model.get_submodule(layer_name), folded_model.get_submodule(bn_name))
            _replace(folded_model, bn_name, nn.Identity())
    folded = tuple(Folded(bn, layer) for bn, layer in pairs)
    return FoldResult(folded_model, folded, tuple(remaining))


def _plan(model: nn.Module) -> tuple[list[tuple[str, str]], list[Remaining]]:
    """Which BatchNorm goes into which layer, and why each other BatchNorm stays."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # data-dependent control flow and the like
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find which layer "
                         f"feeds each BatchNorm: {err}") from err
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module"]
    count = Counter(n.target for n in calls)
    pairs, remaining = [], []
    for name, bn in modules.items():
        if not isinstance(bn, _BatchNorm):
            continue
        node = next((n for n in calls if n.target == name), None)
        reason = _why_not(bn, node, modules, count)
        if reason is None:
            pairs.append((name, node.args[0].target))
        else:
            remaining.append(Remaining(name, reason))
    return pairs, remaining


def _why_not(bn: _BatchNorm, node: fx.Node | None, modules: dict[str, nn.Module],
             count: Counter) -> str | None:
    """None when the BatchNorm can be folded, else the reason in words."""
    if node is None or count[node.target] != 1:
        return (f"called {count[node.target] if node else 0} times in forward; folding needs "
                f"exactly one call")
    if not bn.track_running_stats or bn.running_mean is None:
        return "has no running statistics (track_running_stats=False): it normalises each batch"
    src = node.args[0] if node.args else None
    if not isinstance(src, fx.Node):
        return f"its input is a constant ({src!r}), not a layer's output"
    layer = modules.get(src.target) if src.op == "call_module" else None
    if not isinstance(layer, (*_CONVS, nn.Linear)):
        return f"its input is {_describe(src, modules)}, not a Conv or Linear output"
    if count[src.target] != 1:
        return (f"{src.target} is called {count[src.target]} times; folding would change its "
                f"other calls")
    others = [u.name for u in src.users if u is not node]
    if others:
        return f"the output of {src.target} is also used by {', '.join(others)}"
    out_features = layer.out_channels if isinstance(layer, _CONVS) else layer.out_features
    if out_features != bn.num_features:
        return f"{src.target} has {out_features} outputs, the BatchNorm {bn.num_features} features"
    return None


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"the output of {node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"{node.name} ({getattr(node.target, '__module__', '')}.{node.target.__name__})"
    if node.op == "call_method":
        return f"{node.name} (Tensor.{node.target})"
    return f"{node.name} (the model input)" if node.op == "placeholder" else node.name


def _fuse_into(layer: nn.Module, bn: _BatchNorm) -> None:
    """Move `bn` into `layer`'s weight and bias (a missing bias becomes one; dtypes are kept)."""
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    if isinstance(layer, _CONVS):
        layer.weight, layer.bias = fuse_conv_bn_weights(
            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, weight, bias)
    else:
        layer.weight, layer.bias = fuse_linear_bn_weights(
            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, weight, bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
