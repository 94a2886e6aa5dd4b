"""The one registry of architectures: name -> builder, input side, training recipes.

Every other part (trainer, exporter, tests, benchmarks) takes names, input sides and recipes from
here. The layers are the seeds' (d2l chapter 6.6 and 7, "modern CNNs"), layer for layer; only the
Python spelling differs (one private builder per family, as timm does).

Example:
    >>> from trainer.models import ARCHITECTURES, build
    >>> ARCHITECTURES["resnet18"].input_side
    96
    >>> net = build("resnet18")   # nn.Module taking float [N, 1, 96, 96]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from model_contract import NUM_CLASSES


@dataclass(frozen=True)
class Recipe:
    """How to train an architecture. The d2l recipe is plain SGD at a constant learning rate."""

    lr: float
    batch_size: int
    epochs: int = 10
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"  # "constant" | "cosine" (one warm-up epoch) | "budget" (over time)
    augment: bool = False  # random 2-pixel shifts and horizontal flips, on the device

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: Callable[[], nn.Module]
    input_side: int
    description: str
    recipes: dict[str, Recipe] = field(default_factory=dict)
    # Channels-last pays for wide convolutions (AlexNet trains 1.3x faster with it under bf16 on
    # this CPU) but slows LeNet-BN's 6- and 16-channel ones 2.7x (9k vs 24k examples/s).
    channels_last: bool = True
    # The floor: the test accuracy d2l's executed notebooks reach in 10 epochs with the d2l recipe
    # (docs/DESIGN.md "Accuracy to reach"), which the d2l recipe must reach here too.
    d2l_floor: float | None = None
    # d2l's published GPU training speed for this network (examples/s, its notebooks' last line);
    # None where the book prints none. `make gpu-check` sets our CUDA speed beside it.
    d2l_gpu_examples_per_s: float | None = None


def _improved(d2l: Recipe, lr: float, regularize: bool = True) -> Recipe:
    """The "improved" recipe: Nesterov momentum with a cosine schedule converges further in the
    same ten epochs. The large models also get weight decay, label smoothing and shift/flip
    augmentation against the overfitting they show after epoch 5; the LeNets underfit, and the
    same regularisation cost them accuracy (lenet 0.736 with it, 0.882 without; lenet_bn 0.894
    with it, 0.904 without: 10 epochs on this CPU).
    """
    recipe = replace(d2l, lr=lr, momentum=0.9, nesterov=True, schedule="cosine")
    if regularize:
        recipe = replace(recipe, weight_decay=5e-4, label_smoothing=0.1, augment=True)
    return recipe


# --- LeNet (d2l 6.6) and LeNet with BatchNorm (d2l 7.5) -------------------------------------------

def _lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, NUM_CLASSES))


def _lenet_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, NUM_CLASSES))


# --- AlexNet (d2l 7.1) -----------------------------------------------------------------------------

def _alexnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, NUM_CLASSES))


# --- VGG-11 with a quarter of the channels (d2l 7.2) ----------------------------------------------

VGG11_SMALL_ARCH = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))


def _vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _vgg11() -> nn.Module:
    blocks, in_channels = [], 1
    for num_convs, out_channels in VGG11_SMALL_ARCH:
        blocks.append(_vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *blocks, nn.Flatten(),
        nn.Linear(in_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, NUM_CLASSES))


# --- Network in Network (d2l 7.3) -----------------------------------------------------------------

def _nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
               padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def _nin() -> nn.Module:
    return nn.Sequential(
        _nin_block(1, 96, kernel_size=11, stride=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        _nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        _nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        _nin_block(384, NUM_CLASSES, kernel_size=3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


# --- GoogLeNet (d2l 7.4) --------------------------------------------------------------------------

class Inception(nn.Module):
    """Four parallel paths concatenated on channels; c1..c4 are each path's output channels."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int],
                 c4: int):
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def _googlenet() -> nn.Module:
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, NUM_CLASSES))


# --- ResNet-18 (d2l 7.6) --------------------------------------------------------------------------

class Residual(nn.Module):
    """Two 3x3 Conv->BN pairs with a skip connection; a 1x1 conv matches shapes when asked."""

    def __init__(self, in_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = (nn.Conv2d(in_channels, num_channels, kernel_size=1, stride=strides)
                      if use_1x1conv else None)
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def _resnet_stage(in_channels: int, num_channels: int, num_residuals: int,
                  first_block: bool = False) -> nn.Sequential:
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(in_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blocks.append(Residual(num_channels, num_channels))
    return nn.Sequential(*blocks)


def _resnet18() -> nn.Module:
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(
        b1,
        _resnet_stage(64, 64, 2, first_block=True),
        _resnet_stage(64, 128, 2),
        _resnet_stage(128, 256, 2),
        _resnet_stage(256, 512, 2),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, NUM_CLASSES))


# --- DenseNet (d2l 7.7) ---------------------------------------------------------------------------

def _dense_conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Pre-activation BN -> ReLU -> Conv: the BN precedes its conv, so it cannot be folded into it."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """Each conv block sees the concatenation of the block input and every earlier output."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int):
        super().__init__()
        self.net = nn.ModuleList(
            _dense_conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def _transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


def _densenet(num_convs_in_dense_blocks=(4, 4, 4, 4), growth_rate: int = 32) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                               nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
    num_channels = 64
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        block = DenseBlock(num_convs, num_channels, growth_rate)
        layers.append(block)
        num_channels = block.out_channels
        if i != len(num_convs_in_dense_blocks) - 1:  # halve the channels between dense blocks
            layers.append(_transition_block(num_channels, num_channels // 2))
            num_channels //= 2
    layers += [nn.BatchNorm2d(num_channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)),
               nn.Flatten(), nn.Linear(num_channels, NUM_CLASSES)]
    return nn.Sequential(*layers)


# --- The registry ---------------------------------------------------------------------------------

ARCHITECTURES: dict[str, Architecture] = {}


def _register(name: str, builder: Callable[[], nn.Module], input_side: int, description: str,
              d2l: Recipe, *, improved_lr: float, floor: float, d2l_gpu: float | None = None,
              regularize: bool = True, channels_last: bool = True) -> None:
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} registered twice")
    ARCHITECTURES[name] = Architecture(
        name, builder, input_side, description,
        recipes={"d2l": d2l, "improved": _improved(d2l, improved_lr, regularize)},
        channels_last=channels_last, d2l_floor=floor, d2l_gpu_examples_per_s=d2l_gpu)


# The d2l recipes are the seeds' (zh-v2 notebooks): learning rate and batch size per chapter; the
# floors and GPU speeds are those notebooks' printed results (docs/DESIGN.md).
_register("lenet", _lenet, 28, "LeNet-5 (sigmoid, avg-pool), d2l 6.6",
          Recipe(lr=0.9, batch_size=256), improved_lr=0.6, floor=0.78, regularize=False)
_register("lenet_bn", _lenet_bn, 28, "LeNet with BatchNorm after every conv/linear, d2l 7.5",
          Recipe(lr=1.0, batch_size=256), improved_lr=0.2, floor=0.80, regularize=False,
          channels_last=False)
_register("alexnet", _alexnet, 224, "AlexNet, 1 input channel, dropout 0.5, d2l 7.1",
          Recipe(lr=0.01, batch_size=128), improved_lr=0.01, floor=0.88, d2l_gpu=3942)
_register("vgg11", _vgg11, 224, "VGG-11 with a quarter of the channels, d2l 7.2",
          Recipe(lr=0.05, batch_size=128), improved_lr=0.02, floor=0.91, d2l_gpu=2464)
_register("nin", _nin, 224, "Network in Network, global average pooling, d2l 7.3",
          Recipe(lr=0.1, batch_size=128), improved_lr=0.02, floor=0.79, d2l_gpu=3088)
_register("googlenet", _googlenet, 96, "GoogLeNet, 9 Inception blocks, d2l 7.4",
          Recipe(lr=0.1, batch_size=128), improved_lr=0.05, floor=0.88, d2l_gpu=3266)
_register("resnet18", _resnet18, 96, "ResNet-18 with d2l Residual blocks, d2l 7.6",
          Recipe(lr=0.05, batch_size=256), improved_lr=0.1, floor=0.89, d2l_gpu=5033)
_register("densenet", _densenet, 96, "DenseNet, 4 dense blocks of 4 convs, growth 32, d2l 7.7",
          Recipe(lr=0.1, batch_size=256), improved_lr=0.1, floor=0.88, d2l_gpu=5626)

RECIPES = ("d2l", "improved")
SCHEDULES = ("constant", "cosine", "budget")


def get(name: str) -> Architecture:
    """The registry entry for `name`; an unknown name raises one error listing the valid ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose from: "
                       f"{', '.join(ARCHITECTURES)}") from None


def build(name: str) -> nn.Module:
    """A freshly initialised network for `name`, taking float [N, 1, side, side] in [0, 1]."""
    return get(name).builder()


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
