"""The serving contract between the exporter and the server, in one torch-free module both import.

An exported model is a folder `<models_dir>/<arch>/<version>/` holding `model.onnx` (and the
exporter's `report.json`). The graph takes `image` uint8 [batch, 1, 28, 28] and returns `logits`
and `probabilities` float32 [batch, 10]; everything else the server needs travels in the file's
`metadata_props` under the keys below. Both sides import these names, so they cannot drift.

The probe (`fmnist.probe`) is a handful of test images with the probabilities the exporter
measured for them on onnxruntime's CPU provider; the server runs them on the provider it actually
serves with and refuses a version whose answers differ by more than `PROBE_TOLERANCE`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

import numpy as np

SIDE = 28
NUM_CLASSES = 10
INPUT = "image"
OUTPUTS = ("logits", "probabilities")
LOGITS, PROBABILITIES = OUTPUTS
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"

# metadata_props keys (all values are strings)
ARCH = "fmnist.arch"
LABELS = "fmnist.labels"
INPUT_SIDE = "fmnist.input_side"
TEST_ACCURACY = "fmnist.test_accuracy"
TEST_IMAGES = "fmnist.test_images"
MAX_ABS_DIFF = "fmnist.max_abs_diff"
TOP1_AGREEMENT = "fmnist.top1_agreement"
BN_FOLDED = "fmnist.bn_folded"
BN_REMAINING = "fmnist.bn_remaining"
SOURCE_SHA256 = "fmnist.source_checkpoint_sha256"
EXPORTED_AT = "fmnist.exported_at"
TORCH_VERSION = "fmnist.torch_version"
PROBE = "fmnist.probe"
REQUIRED_KEYS = (ARCH, LABELS, INPUT_SIDE, TEST_ACCURACY, BN_FOLDED, BN_REMAINING, SOURCE_SHA256,
                 EXPORTED_AT, TORCH_VERSION)

PROBE_IMAGES = 16
# Max |Δ probability| between the exporter's CPU run and the serving provider's run. fp32 CPU vs
# CPU agrees to ~1e-6; CUDA (TF32 off by default in onnxruntime, other conv algorithms) to ~1e-4.
PROBE_TOLERANCE = 1e-3

# A version folder is named by a positive integer written in ASCII digits without leading zeros:
# "3" is version 3; "03", "+3", "3\n", "٣" are not versions (so no two folders name one version).
_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # at most 18 digits: always fits an int64


def parse_version(name: str) -> int | None:
    """A version folder's number, or None when `name` is not a version folder's name."""
    return int(name) if _VERSION.fullmatch(name) else None


@dataclass(frozen=True)
class Probe:
    images: np.ndarray  # uint8 [N, 1, 28, 28]
    probabilities: np.ndarray  # float32 [N, 10], as the exporter measured them


def encode_probe(images: np.ndarray, probabilities: np.ndarray) -> str:
    """The `fmnist.probe` value: JSON with base64 of the raw little-endian arrays."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    probabilities = np.ascontiguousarray(probabilities, dtype="<f4")
    if images.ndim != 4 or images.shape[1:] != (1, SIDE, SIDE):
        raise ValueError(f"probe images must be uint8 [N, 1, {SIDE}, {SIDE}], got {images.shape}")
    if probabilities.shape != (len(images), NUM_CLASSES):
        raise ValueError(f"probe probabilities must be [{len(images)}, {NUM_CLASSES}], "
                         f"got {probabilities.shape}")
    return json.dumps({"count": len(images),
                       "images": base64.b64encode(images.tobytes()).decode("ascii"),
                       "probabilities": base64.b64encode(probabilities.tobytes()).decode("ascii")})


def decode_probe(text: str) -> Probe:
    """Parse a `fmnist.probe` value; ValueError says what is wrong with it."""
    try:
        data = json.loads(text)
        count = data["count"]
        images = base64.b64decode(data["images"], validate=True)
        probabilities = base64.b64decode(data["probabilities"], validate=True)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{PROBE} is not a probe ({type(e).__name__}: {e})") from None
    if not isinstance(count, int) or not 0 < count <= 1024:
        raise ValueError(f"{PROBE} count must be 1..1024, got {count!r}")
    if len(images) != count * SIDE * SIDE or len(probabilities) != count * NUM_CLASSES * 4:
        raise ValueError(f"{PROBE} holds {len(images)} image bytes and {len(probabilities)} "
                         f"probability bytes, which do not match count={count}")
    return Probe(np.frombuffer(images, np.uint8).reshape(count, 1, SIDE, SIDE).copy(),
                 np.frombuffer(probabilities, "<f4").reshape(count, NUM_CLASSES).astype(np.float32))
