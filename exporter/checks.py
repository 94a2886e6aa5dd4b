"""Graph checks on an exported model, before anything is measured or written."""

from __future__ import annotations

import onnx

from exporter.errors import ExportError

# A BatchNormalization reading one of these ops' outputs could have been folded into it: Conv and
# Gemm directly, MatMul (+ Add for the bias) being how a Linear on a >2-D input is exported.
_FOLDABLE = {"Conv", "Gemm", "MatMul"}


def unfolded_batchnorms(model: onnx.ModelProto) -> list[str]:
    """Every BatchNormalization node fed by a Conv/Gemm/MatMul (or a MatMul's bias Add)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "Add":  # Linear = MatMul + Add
            src = next((producer[i] for i in src.input
                        if i in producer and producer[i].op_type == "MatMul"), src)
        if src is not None and src.op_type in _FOLDABLE:
            found.append(f"{node.name} after {src.op_type} {src.name}")
    return found


def check_graph(model: onnx.ModelProto, what: str) -> None:
    """onnx.checker (with shape inference) passes and no foldable BatchNormalization is left."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{what}: onnx.checker rejects the graph: {err}") from err
    left = unfolded_batchnorms(model)
    if left:
        raise ExportError(f"{what}: {len(left)} BatchNormalization node(s) left after a Conv/Gemm "
                          f"(folding failed): {'; '.join(left)}")
