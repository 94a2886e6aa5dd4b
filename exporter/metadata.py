"""The ONNX file describes itself: everything the server needs to serve it and a person needs to
trust it travels in `metadata_props` (docs/DESIGN.md, "ONNX models"; all values are strings).
The record and the strings are model_contract.ModelMetadata's, which the server reads with
`from_props`, so the exporter never formats a value the server would parse differently."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

from exporter.fold import FoldResult
from exporter.parity import Parity
from model_contract import ModelMetadata
from trainer.data import LABELS


def build(arch: str, input_side: int, fold: FoldResult, parity: Parity, checkpoint_sha256: str,
          probe: str) -> ModelMetadata:
    """The fp32 file's record. `bn_folded` maps each folded BatchNorm to the layer that absorbed
    it and `bn_remaining` each other BatchNorm to the reason it stayed; `probe` is
    exporter.parity.probe's value."""
    return ModelMetadata(
        arch=arch, labels=tuple(LABELS), input_side=input_side,
        test_accuracy=parity.onnx_accuracy, test_images=parity.images,
        max_abs_diff=parity.max_abs_diff, top1_agreement=parity.top1_agreement,
        bn_folded={f.bn: f.into for f in fold.folded},
        bn_remaining={r.bn: r.reason for r in fold.remaining},
        source_sha256=checkpoint_sha256,
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        torch_version=str(torch.__version__), probe=probe)


def attach(model: onnx.ModelProto, record: ModelMetadata) -> dict[str, str]:
    """Replace `model`'s metadata_props with `record`'s, in place (copying a 180 MB proto to stay
    pure is not worth it); returns the strings written."""
    props = record.to_props()
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return props


def read(path: str | Path) -> dict[str, str]:
    """The metadata_props of the file at `path`, as strings (the weights are not needed)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_record(path: str | Path) -> ModelMetadata:
    """The file's record; model_contract.MetadataError names a missing or malformed key."""
    return ModelMetadata.from_props(read(path))
