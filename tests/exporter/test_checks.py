"""The graph check, on small hand-made graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.checks import check_graph, unfolded_batchnorms
from exporter.errors import ExportError


def _graph(*ops: str) -> onnx.ModelProto:
    """x [1, 4] -> ops in a chain; BatchNormalization / Gemm / MatMul / Add get constant inputs."""
    inits, nodes, prev = [], [], "x"
    for i, op in enumerate(ops):
        out = f"y{i}"
        if op == "BatchNormalization":
            names = [f"bn{i}_{k}" for k in ("scale", "bias", "mean", "var")]
            inits += [numpy_helper.from_array(np.ones(4, np.float32), n) for n in names]
            nodes.append(helper.make_node(op, [prev, *names], [out], name=f"n{i}"))
        elif op in ("Gemm", "MatMul"):
            inits.append(numpy_helper.from_array(np.eye(4, dtype=np.float32), f"w{i}"))
            nodes.append(helper.make_node(op, [prev, f"w{i}"], [out], name=f"n{i}"))
        elif op == "Add":
            inits.append(numpy_helper.from_array(np.zeros(4, np.float32), f"b{i}"))
            nodes.append(helper.make_node(op, [prev, f"b{i}"], [out], name=f"n{i}"))
        else:
            nodes.append(helper.make_node(op, [prev], [out], name=f"n{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("ops, flagged", [
    (("Gemm", "BatchNormalization"), ["n1 after Gemm n0"]),
    (("MatMul", "BatchNormalization"), ["n1 after MatMul n0"]),
    (("MatMul", "Add", "BatchNormalization"), ["n2 after MatMul n0"]),
    (("Gemm", "Relu", "BatchNormalization"), []),
    (("Relu", "Add", "BatchNormalization"), []),
    (("BatchNormalization", "Gemm"), []),
])
def test_batchnorm_after_a_foldable_op_is_found(ops, flagged):
    assert unfolded_batchnorms(_graph(*ops)) == flagged


def test_check_graph_refuses_with_the_node_names():
    check_graph(_graph("Gemm", "Relu", "BatchNormalization"), "ok")
    with pytest.raises(ExportError,
                       match=r"demo: 1 BatchNormalization node\(s\) left .*n1 after Gemm n0"):
        check_graph(_graph("Gemm", "BatchNormalization"), "demo")


def test_check_graph_runs_the_onnx_checker():
    model = _graph("Relu")
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ExportError, match="onnx.checker rejects"):
        check_graph(model, "broken")
