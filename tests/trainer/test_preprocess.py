"""The preprocessing module that training and the exported graph share."""

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2

from trainer.preprocess import Preprocess


@pytest.mark.parametrize("side", [96, 224])
def test_matches_torchvision_bilinear_resize_when_upsampling(side):
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    ours = Preprocess(side)(images)
    reference = v2.Resize(side, interpolation=InterpolationMode.BILINEAR, antialias=True)(
        images.float() / 255)
    assert ours.shape == (4, 1, side, side) and ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() <= 1e-5


def test_native_side_only_scales():
    images = torch.tensor([[[[0, 51, 255] + [0] * 25] * 28]], dtype=torch.uint8)
    out = Preprocess(28)(images)
    assert out.shape == (1, 1, 28, 28)
    assert out[0, 0, 0, :3].tolist() == pytest.approx([0.0, 0.2, 1.0])
