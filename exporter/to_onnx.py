"""The ONNX export step: a Servable in, an in-memory ONNX ModelProto out (nothing touches disk).

The export is split in two so the report can compare like with like: `export` gives the exporter's
raw graph (its optimizer off), in which folded and unfolded models differ exactly by the folded
BatchNorm nodes; `optimize` then runs the graph optimizer that torch.onnx would have run
(onnxscript: constant folding, shape clean-up). That optimizer would also fold a Conv/Gemm ->
BatchNormalization pair by itself, which is why the exporter's graph check runs on the raw graph as
well: it checks our folding, not onnxscript's.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnxscript.optimizer
import torch

import model_contract as contract
from exporter.wrap import Servable

# torch 2.14's exporter default, pinned so a torch upgrade does not silently change the files. The
# exporter writes IR version 10, which the server's onnxruntime (1.31) loads; the parity step
# loads every file in onnxruntime before it is written, so a mismatch cannot reach the server.
DEFAULT_OPSET = 20
MIN_OPSET = 18  # torch.onnx's own opset; it cannot convert below it (it stays at 18, with warnings)
# The example batch has 2 images: torch.export specialises a dimension whose example size is 1.
_EXAMPLE = torch.zeros(2, 1, contract.SIDE, contract.SIDE, dtype=torch.uint8)


def export(servable: Servable, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The exporter's raw graph: input `image` uint8 [batch, 1, 28, 28], outputs logits and
    probabilities, weights inside the proto (no external data)."""
    if servable.training:
        raise ValueError("export needs the model in eval mode (BatchNorm, Dropout)")
    program = torch.onnx.export(
        servable, (_EXAMPLE,), dynamo=True, optimize=False, verbose=False, opset_version=opset,
        external_data=False, input_names=[contract.INPUT], output_names=list(contract.OUTPUTS),
        dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """What torch.onnx.export(optimize=True) would have done, as a separate step."""
    return onnxscript.optimizer.optimize(model)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes of the main graph by op type, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())
