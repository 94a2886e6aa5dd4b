"""The served ONNX model's answers on the test set, the ground truth for the confusion matrix.

It runs the very file the server serves, with onnxruntime on the CPU provider (as the exporter's
parity check does), so the report shows what clients get, not what PyTorch would say. The 224-px
models take minutes for the 10,000 test images on 2 CPU cores, so predictions are cached under
the report folder, keyed by the sha256 of the model file and of the test images and labels: a
re-run after a new export recomputes only that model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

import model_contract as contract

# Images per onnxruntime call: bounds memory at 224x224 (~1.6 GB of activations per 100 images in
# the exporter's measurements); larger batches buy nothing for the big models on a CPU.
BATCH = 100


def data_key(images: np.ndarray, labels: np.ndarray) -> str:
    """A short digest of the test set in use, part of every cache key."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]


def predictions(model: Path, images: np.ndarray, data: str, cache: Path,
                progress: bool = True) -> np.ndarray:
    """Top-1 class per image (int64 [N]) of `model` on `images` (uint8 [N, 1, 28, 28])."""
    path = cache / f"{contract.sha256_file(model)[:16]}-{data}.npy"
    if path.exists():
        return np.load(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the CPU-provider warnings are noise here
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    out = []
    with tqdm(total=len(images), desc=f"{model.parent.parent.name} {model.name}", unit="img",
              disable=not progress, leave=False) as bar:
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH]
            logits = session.run([contract.OUTPUTS[0]], {contract.INPUT: batch})[0]
            out.append(logits.argmax(1))
            bar.update(len(batch))
    top1 = np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, top1)
    tmp.replace(path)
    return top1
