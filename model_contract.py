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
# Precision variants (docs/DESIGN.md "Precision variants"): a variant file sits beside model.onnx
# in the same version folder and carries these keys on top of the fp32 model's (its own
# test_accuracy, test_images and probe).
VARIANT = "fmnist.variant"                  # "int8" / "fp16"; absent: the fp32 model
VARIANT_RECIPE = "fmnist.variant_recipe"    # JSON: how it was made (quantization settings, ...)
FP32_ACCURACY = "fmnist.fp32_accuracy"      # the fp32 model's accuracy on the same test images
FP32_AGREEMENT = "fmnist.fp32_agreement"    # share of test images where it picks fp32's class
VARIANT_SPEED = "fmnist.variant_speed"      # JSON: img/s of fp32 and variant at batch 1 and 32,
                                            # and the exporter's CPU and ISA flags
REQUIRED_KEYS = (ARCH, LABELS, INPUT_SIDE, TEST_ACCURACY, BN_FOLDED, BN_REMAINING, SOURCE_SHA256,
                 EXPORTED_AT, TORCH_VERSION)

PROBE_IMAGES = 16
# Max |Δ probability| between the exporter's CPU run and the serving provider's run. fp32 CPU vs
# CPU agrees to ~1e-6; CUDA (TF32 off by default in onnxruntime, other conv algorithms) to ~1e-4.
PROBE_TOLERANCE = 1e-3
# A variant is probed against its own exported probabilities. INT8 kernels differ by ISA (VNNI,
# AVX-512, AVX2 with its u8*s8 saturation, ARM dot products) in rounding at requantization: a
# difference of one quantum on some activation moves a probability by up to ~1e-2; FP16 runs on
# CUDA differ by algorithm choice at ~1e-3 of a logit.
VARIANTS = ("int8", "fp16")
VARIANT_PROBE_TOLERANCE = {"int8": 3e-2, "fp16": 1e-2}
# A variant is served as its own model, "<arch>:<variant>" ("resnet18:int8"): one name that works
# in fmnist.v1 and v2 requests, health service names and metrics labels. ':' never occurs in an
# architecture's name (trainer/models.py), so the name cannot collide with a model folder.
VARIANT_SEPARATOR = ":"


def variant_file(variant: str) -> str:
    """The file of a variant inside a version folder: "model.int8.onnx"."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    stem, dot, ext = MODEL_FILE.rpartition(".")
    return f"{stem}.{variant}{dot}{ext}"


def served_name(arch: str, variant: str | None) -> str:
    """The model name a variant is served under: "resnet18:int8" (the arch alone for fp32)."""
    return f"{arch}{VARIANT_SEPARATOR}{variant}" if variant else arch


def split_name(name: str) -> tuple[str, str | None]:
    """"resnet18:int8" -> ("resnet18", "int8"); "resnet18" -> ("resnet18", None)."""
    arch, sep, variant = name.partition(VARIANT_SEPARATOR)
    return (arch, variant) if sep else (name, None)

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
