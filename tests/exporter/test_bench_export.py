"""bench/export.py measures what it says: the fold ratio compares two graphs that differ only by
the folding, at one onnxruntime level, and the CPU line names the vector extensions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from bench import export as bench


class _Recorded:
    """Stands in for an onnxruntime session: remembers its graph, answers zeros at once."""

    def __init__(self, model_bytes: bytes, level: ort.GraphOptimizationLevel):
        self.ops = Counter(n.op_type for n in onnx.load_from_string(model_bytes).graph.node)
        self.model_bytes, self.level = model_bytes, level

    def run(self, names, feeds):
        return [np.zeros((len(next(iter(feeds.values()))), 10), np.float32)]


def test_fold_ratio_compares_graphs_that_differ_only_by_the_folding(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(bench, "cpu_session", lambda model, level: made.append(
        _Recorded(model, level)) or made[-1])
    info, rows = bench.measure_arch("lenet_bn", tmp_path, seconds=0.003)
    assert info["bn"] == "4/0" and {"fold:off", "fold:all"} <= rows[0].keys()
    for level in bench.LEVELS.values():
        unfolded, folded = [s for s in made if s.level == level][:2]  # the fold ratio's pair
        assert unfolded.ops["BatchNormalization"] == 4 and folded.ops["BatchNormalization"] == 0
        del unfolded.ops["BatchNormalization"]
        assert unfolded.ops == folded.ops


def test_cpu_line_names_the_model_and_its_vector_extensions():
    cpuinfo = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
               "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_bf16\n\n"
               "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n")
    line = bench.cpu_description(cpuinfo)
    assert line.startswith("CPU: Intel(R) Xeon(R) Platinum 8480+, ")
    assert ("ISA: avx2 avx512f avx512_vnni amx_tile amx_bf16 (no avx512_bf16 avx_vnni amx_int8)"
            in line)
    assert "ISA flags unknown" in bench.cpu_description("")
