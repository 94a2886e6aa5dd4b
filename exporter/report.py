"""What each export leaves behind for people: report.json beside the model, and the same figures
printed. The three node counts compare like with like: `unfolded` and `folded` are the exporter's
raw graphs of the model before and after BatchNorm folding (so they differ exactly by what folding
removed), `written` is the folded graph after the ONNX optimizer, i.e. the file on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ExportReport:
    arch: str
    version: int
    model: str                      # path of the written model.onnx
    checkpoint: dict                # path, sha256, epoch, test_accuracy as the trainer measured it
    data_source: str
    bn_folded: list[dict]           # {"bn", "into"}
    bn_remaining: list[dict]        # {"bn", "reason"}
    parity: dict                    # exporter.parity.Parity, plus the thresholds it passed
    nodes: dict[str, dict[str, int]]  # "unfolded" / "folded" / "written" -> op type -> count
    opset: int
    ir_version: int
    file_bytes: int
    seconds: dict[str, float]       # per step, and "total" up to the write
    metadata: dict[str, str]
    versions: dict[str, str]        # torch, onnx, onnxscript, onnxruntime
    variants: list[dict] = field(default_factory=list)  # exporter.variants.Variant.as_report()

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


@dataclass(frozen=True)
class Skipped:
    arch: str
    version: int      # the version that already holds this checkpoint
    checkpoint: str
    sha256: str


def summary(r: ExportReport) -> str:
    p, n = r.parity, r.nodes
    bn_nodes = " -> ".join(str(n[k].get("BatchNormalization", 0)) for k in n)
    lines = [
        f"{r.arch} v{r.version} <- {r.checkpoint['path']} (sha256 {r.checkpoint['sha256'][:12]}, "
        f"epoch {r.checkpoint.get('epoch')}, trainer's test accuracy "
        f"{_num(r.checkpoint.get('test_accuracy'))})",
        f"  BatchNorm: {len(r.bn_folded)} folded, {len(r.bn_remaining)} remaining",
        *(f"    remaining {b['bn']}: {b['reason']}" for b in r.bn_remaining),
        f"  nodes: {_total(n['unfolded'])} unfolded -> {_total(n['folded'])} folded -> "
        f"{_total(n['written'])} written (BatchNormalization {bn_nodes})",
        f"  parity on {p['images']} test images: max |Δ logits| {p['max_abs_diff']:.2g} "
        f"(limit {p['limit_max_abs_diff']:g}), top-1 agreement {p['top1_agreement']:.2%} "
        f"(limit {p['limit_top1_agreement']:.2%})",
        f"  test accuracy: ONNX {p['onnx_accuracy']:.4f}, PyTorch {p['torch_accuracy']:.4f}",
        f"  {r.model}: {r.file_bytes / 1e6:.1f} MB, opset {r.opset}, IR {r.ir_version}, "
        f"{r.seconds['total']:.1f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items() if k != "total") + ")",
    ]
    return "\n".join(lines)


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)
