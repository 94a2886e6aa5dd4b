"""The ONNX file describes itself: everything the server needs to serve it and a person needs to
trust it travels in `metadata_props` (docs/DESIGN.md, "ONNX models"; all values are strings)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

from exporter.fold import FoldResult
from exporter.parity import Parity
from trainer.data import LABELS

SOURCE_SHA256 = "fmnist.source_checkpoint_sha256"
TEST_IMAGES = "fmnist.test_images"


def build(arch: str, input_side: int, fold: FoldResult, parity: Parity,
          checkpoint_sha256: str) -> dict[str, str]:
    """`fmnist.bn_folded` maps each folded BatchNorm to the layer that absorbed it and
    `fmnist.bn_remaining` each other BatchNorm to the reason it stayed (JSON objects)."""
    return {
        "fmnist.arch": arch,
        "fmnist.labels": json.dumps(list(LABELS)),
        "fmnist.input_side": str(input_side),
        "fmnist.test_accuracy": f"{parity.onnx_accuracy:.4f}",
        TEST_IMAGES: str(parity.images),
        "fmnist.max_abs_diff": f"{parity.max_abs_diff:.3g}",
        "fmnist.top1_agreement": f"{parity.top1_agreement:.6f}",
        "fmnist.bn_folded": json.dumps({f.bn: f.into for f in fold.folded}),
        "fmnist.bn_remaining": json.dumps({r.bn: r.reason for r in fold.remaining}),
        SOURCE_SHA256: checkpoint_sha256,
        "fmnist.exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fmnist.torch_version": str(torch.__version__),
    }


def attach(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set `metadata` on `model` in place (copying a 180 MB proto to stay pure is not worth it)."""
    onnx.helper.set_model_props(model, metadata)


def read(path: str | Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
