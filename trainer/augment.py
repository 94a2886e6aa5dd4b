"""Batch augmentation on the device, on uint8 images: no per-image Python, no PIL.

Used by the "improved" recipe only. Shifts of up to `pad` pixels (zero padding, as the background
is black) and horizontal flips: Fashion-MNIST's clothes are left-right symmetric in meaning.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def shift_and_flip(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """uint8 [N, 1, H, W] -> the same shape, each image shifted by a random offset in
    [-pad, pad]^2 and flipped left-right with probability 1/2. Draws from torch's global RNG."""
    n, _, h, w = images.shape
    device = images.device
    flip = torch.rand(n, device=device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]  # [N, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]  # [N, 1, W]
    batch = torch.arange(n, device=device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)
