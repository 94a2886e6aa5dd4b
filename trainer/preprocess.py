"""Preprocessing that travels with the model: uint8 28x28 in, float at the network's input side out.

The trainer applies this module on the training device and the exporter puts the very same module
into the ONNX graph, so what the network saw in training and what it sees in serving cannot drift.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Preprocess(nn.Module):
    """uint8 [N, 1, 28, 28] -> float32 in [0, 1] -> bilinear resize (half-pixel centres, no
    antialias: Fashion-MNIST is only ever enlarged here) to [N, 1, side, side]."""

    def __init__(self, input_side: int):
        super().__init__()
        self.input_side = input_side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0
        if self.input_side == x.shape[-1]:
            return x
        return F.interpolate(x, size=(self.input_side, self.input_side), mode="bilinear",
                             align_corners=False, antialias=False)

    def extra_repr(self) -> str:
        return f"input_side={self.input_side}"
