"""The ONNX file describes itself: everything the server needs to serve it and a person needs to
trust it travels in `metadata_props` (docs/DESIGN.md, "ONNX models"; all values are strings). The
keys are the serving contract's (model_contract.py), which the server reads with the same names."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

import model_contract as contract
from exporter.fold import FoldResult
from exporter.parity import Parity
from trainer.data import LABELS


def build(arch: str, input_side: int, fold: FoldResult, parity: Parity, checkpoint_sha256: str,
          probe: str) -> dict[str, str]:
    """`fmnist.bn_folded` maps each folded BatchNorm to the layer that absorbed it and
    `fmnist.bn_remaining` each other BatchNorm to the reason it stayed (JSON objects); `probe` is
    exporter.parity.probe's value."""
    return {
        contract.ARCH: arch,
        contract.LABELS: json.dumps(list(LABELS)),
        contract.INPUT_SIDE: str(input_side),
        contract.TEST_ACCURACY: f"{parity.onnx_accuracy:.4f}",
        contract.TEST_IMAGES: str(parity.images),
        contract.MAX_ABS_DIFF: f"{parity.max_abs_diff:.3g}",
        contract.TOP1_AGREEMENT: f"{parity.top1_agreement:.6f}",
        contract.BN_FOLDED: json.dumps({f.bn: f.into for f in fold.folded}),
        contract.BN_REMAINING: json.dumps({r.bn: r.reason for r in fold.remaining}),
        contract.SOURCE_SHA256: checkpoint_sha256,
        contract.EXPORTED_AT: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        contract.TORCH_VERSION: str(torch.__version__),
        contract.PROBE: probe,
    }


def attach(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set `metadata` on `model` in place (copying a 180 MB proto to stay pure is not worth it)."""
    onnx.helper.set_model_props(model, metadata)


def read(path: str | Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
