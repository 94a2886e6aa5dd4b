"""Checks of a written model.onnx from the outside: a plain onnxruntime session on the file, with
nothing of the exporter, so a wrong figure in the exporter's own measurement cannot check itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def session(path: str | Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def accuracy(path: str | Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The file's top-1 accuracy on uint8 `images` [N, 1, 28, 28], run in batches of 100."""
    run = session(path)
    logits = np.concatenate([run.run(["logits"], {"image": images[i:i + 100]})[0]
                             for i in range(0, len(images), 100)])
    return float((logits.argmax(1) == labels).mean())
