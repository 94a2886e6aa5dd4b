"""The servable network: what the ONNX file computes, from the dataset's uint8 images to class
probabilities, with the very Preprocess module the trainer used (docs/DESIGN.md, "Preprocessing is
part of the model"). The same wrapper serves as the PyTorch reference in the parity check, so the
reference and the export differ only by the folding and the runtime. Its input and output names
are the serving contract's (model_contract.INPUT, OUTPUTS), given to the graph by to_onnx."""

from __future__ import annotations

import torch
from torch import nn

from trainer.preprocess import Preprocess


class Servable(nn.Module):
    """uint8 [N, 1, 28, 28] -> (logits, probabilities), both float32 [N, 10]."""

    def __init__(self, net: nn.Module, input_side: int):
        super().__init__()
        self.preprocess = Preprocess(input_side)
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(self.preprocess(image))
        return logits, torch.softmax(logits, dim=-1)
