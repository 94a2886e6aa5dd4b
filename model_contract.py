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
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only where a probe is encoded or decoded: the client needs none
    import numpy as np

SIDE = 28
NUM_CLASSES = 10
# Guessing one of ten classes scores 0.10; a test accuracy under twice that means a model that has
# learnt next to nothing (the demo's 224-px models after a short run score 0.09 to 0.13). The
# report, the client and the page (server/api/http/static/page.js) mark such models.
NEAR_CHANCE = 2 / NUM_CLASSES
INPUT = "image"
OUTPUTS = ("logits", "probabilities")
LOGITS, PROBABILITIES = OUTPUTS
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
INT32_MAX = 2**31 - 1  # ListModels sends input_side and test_images as int32

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
# CPU agrees to ~1e-6; CUDA (other conv algorithms; TF32 off by default because
# execution_providers.py sets use_tf32=0, onnxruntime's own default being on) to ~1e-4.
# `python -m server --cuda-tf32` holds fp32 models on CUDA to execution_providers.TF32_PROBE_TOLERANCE.
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


# A served model name is at most this many bytes of UTF-8 (requests naming more are refused
# unread, so a folder with a longer name could never be asked for).
MAX_NAME_BYTES = 128


def unservable_name(name: str) -> str | None:
    """Why a model folder's name cannot be a served model's name, or None when it can: it must be
    UTF-8 (protobuf strings are; a name that is not breaks every ListModels), printable (a
    newline would forge log lines) and at most MAX_NAME_BYTES long."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not UTF-8"
    if not name.isprintable():
        return "control characters"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes, over {MAX_NAME_BYTES}"
    return None


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


def default_artifacts() -> Path:
    """Where every command reads and writes by default: $ARTIFACTS, else ./artifacts."""
    return Path(os.environ.get("ARTIFACTS", "artifacts"))


def default_models_dir() -> Path:
    """The models folder the exporter writes and the server serves: <artifacts>/models."""
    return default_artifacts() / "models"


def model_path(models_dir: str | os.PathLike, arch: str, version: int,
               variant: str | None = None) -> Path:
    """`<models_dir>/<arch>/<version>/model.onnx` (or the variant's file in that folder)."""
    folder = Path(models_dir) / arch / str(version)
    return folder / (variant_file(variant) if variant else MODEL_FILE)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks (what fmnist.source_checkpoint_sha256
    holds for the checkpoint a model was exported from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    import numpy as np

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
    import numpy as np

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


# --- The metadata as one typed record -----------------------------------------------------------

class MetadataError(ValueError):
    """A metadata_props value that is missing or cannot be what its key says; names the key."""


_INT = re.compile(r"[0-9]{1,10}")
MAX_LABELS_CHARS = 2000  # ten class names; bounded before json.loads sees it
MAX_JSON_CHARS = 100_000  # the BatchNorm maps and variant recipes: a few KB in practice


@dataclass(frozen=True)
class ModelMetadata:
    """Everything an exported file says about itself, typed: the exporter writes it with
    `to_props`, the server, the report and the benchmarks read it with `from_props`, so a value's
    format and its bounds are written once. `from_props` refuses what ListModels could not carry
    (an int over int32, a label protobuf cannot encode) or a careless file could make huge."""

    arch: str
    labels: tuple[str, ...]
    input_side: int
    test_accuracy: float
    source_sha256: str
    exported_at: str
    torch_version: str
    bn_folded: dict[str, str] = field(default_factory=dict)  # BatchNorm -> layer it went into
    bn_remaining: dict[str, str] = field(default_factory=dict)  # BatchNorm -> why it stayed
    test_images: int = 0  # what test_accuracy was measured on; 0: the file does not say
    max_abs_diff: float | None = None  # fp32 only: against PyTorch on the test images
    top1_agreement: float | None = None
    probe: str | None = None  # the encoded fmnist.probe (decode_probe reads it)
    variant: str | None = None  # "int8" / "fp16"; None: the fp32 model
    variant_recipe: dict | None = None
    fp32_accuracy: float | None = None
    fp32_agreement: float | None = None
    variant_speed: dict | None = None

    def to_props(self) -> dict[str, str]:
        """The metadata_props of the file (every value a string; None fields left out)."""
        out = {ARCH: self.arch, LABELS: json.dumps(list(self.labels)),
               INPUT_SIDE: str(self.input_side), TEST_ACCURACY: f"{self.test_accuracy:.4f}",
               BN_FOLDED: json.dumps(self.bn_folded), BN_REMAINING: json.dumps(self.bn_remaining),
               SOURCE_SHA256: self.source_sha256, EXPORTED_AT: self.exported_at,
               TORCH_VERSION: self.torch_version}
        optional = {TEST_IMAGES: self.test_images or None,
                    MAX_ABS_DIFF: _fmt(self.max_abs_diff, ".3g"),
                    TOP1_AGREEMENT: _fmt(self.top1_agreement, ".6f"), PROBE: self.probe,
                    VARIANT: self.variant, VARIANT_RECIPE: _json(self.variant_recipe),
                    FP32_ACCURACY: _fmt(self.fp32_accuracy, ".4f"),
                    FP32_AGREEMENT: _fmt(self.fp32_agreement, ".6f"),
                    VARIANT_SPEED: _json(self.variant_speed)}
        out.update({k: str(v) for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        """The record of a file's metadata_props; MetadataError names the first bad key."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise MetadataError(f"missing metadata {', '.join(missing)}")
        variant = props.get(VARIANT)
        if variant is not None and variant not in VARIANTS:
            raise MetadataError(f"metadata {VARIANT}={variant[:20]!r} is not one of "
                                f"{', '.join(VARIANTS)}")
        return cls(
            arch=_text(props, ARCH, 100), labels=_labels(props[LABELS]),
            input_side=_int(props, INPUT_SIDE), test_accuracy=_share(props, TEST_ACCURACY),
            source_sha256=_text(props, SOURCE_SHA256, 128),
            exported_at=_text(props, EXPORTED_AT, 64),
            torch_version=_text(props, TORCH_VERSION, 64),
            bn_folded=_json_map(props, BN_FOLDED), bn_remaining=_json_map(props, BN_REMAINING),
            test_images=_int(props, TEST_IMAGES) if TEST_IMAGES in props else 0,
            max_abs_diff=_number(props, MAX_ABS_DIFF), top1_agreement=_share(props, TOP1_AGREEMENT),
            probe=props.get(PROBE), variant=variant,
            variant_recipe=_json_map(props, VARIANT_RECIPE, None),
            fp32_accuracy=_share(props, FP32_ACCURACY),
            fp32_agreement=_share(props, FP32_AGREEMENT, required=variant is not None),
            variant_speed=_json_map(props, VARIANT_SPEED, None))

    @property
    def probe_tolerance(self) -> float:
        """The fp32 tolerance, or the variant's."""
        return VARIANT_PROBE_TOLERANCE.get(self.variant or "", PROBE_TOLERANCE)


def _fmt(value: float | None, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def _json(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


def _text(props: dict[str, str], key: str, limit: int) -> str:
    value = props[key]
    if len(value) > limit:
        raise MetadataError(f"metadata {key} has {len(value)} characters, more than {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"metadata {key} is not valid UTF-8: {value[:80]!r}") from None
    return value


def _int(props: dict[str, str], key: str) -> int:
    """An integer from 1 to 2^31-1 (what ListModels' int32 fields carry), in ASCII digits."""
    text = props[key]
    value = int(text) if _INT.fullmatch(text) else 0
    if not 1 <= value <= INT32_MAX:
        raise MetadataError(f"metadata {key} must be an integer from 1 to {INT32_MAX}, "
                            f"got {text[:40]!r}")
    return value


def _number(props: dict[str, str], key: str, required: bool = False) -> float | None:
    if key not in props:
        if required:
            raise MetadataError(f"missing metadata {key}")
        return None
    try:
        value = float(props[key][:40])
    except ValueError:
        raise MetadataError(f"metadata {key} is not a number: {props[key][:40]!r}") from None
    if not math.isfinite(value) and key not in _SHARES:  # a share says "in [0, 1]" below
        raise MetadataError(f"metadata {key} must be finite, got {value}")
    return value


_SHARES = (TEST_ACCURACY, TOP1_AGREEMENT, FP32_ACCURACY, FP32_AGREEMENT)


def _share(props: dict[str, str], key: str, required: bool = False) -> float | None:
    """A fraction in [0, 1] (an accuracy or an agreement)."""
    value = _number(props, key, required or key == TEST_ACCURACY)
    if value is not None and not 0.0 <= value <= 1.0:  # also NaN
        raise MetadataError(f"metadata {key} must be in [0, 1], got {value}")
    return value


def _json_map(props: dict[str, str], key: str, default=dict):
    """A JSON object, bounded before parsing (json.loads of a deeply nested value raises
    RecursionError)."""
    if key not in props:
        return default() if default else None
    text = props[key]
    if len(text) > MAX_JSON_CHARS:
        raise MetadataError(f"metadata {key} has {len(text):,} characters, over {MAX_JSON_CHARS:,}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MetadataError(f"metadata {key} is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise MetadataError(f"metadata {key} must be a JSON object, got {text[:80]!r}")
    return value


def _labels(text: str) -> tuple[str, ...]:
    """The class names: bounded, JSON, ten non-empty strings protobuf can encode."""
    if len(text) > MAX_LABELS_CHARS:
        raise MetadataError(f"metadata {LABELS} has {len(text)} characters, more than the "
                            f"{MAX_LABELS_CHARS} ten class names need")
    try:
        labels = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MetadataError(f"metadata {LABELS} is not JSON ({type(e).__name__}: {e})") from None
    if (not isinstance(labels, list) or len(labels) != NUM_CLASSES
            or not all(isinstance(x, str) and x for x in labels)):
        raise MetadataError(f"metadata {LABELS} must be a JSON list of {NUM_CLASSES} "
                            f"non-empty strings, got {text[:200]!r}")
    try:
        for label in labels:
            label.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"metadata {LABELS} has a name that is not valid UTF-8 "
                            f"(a lone surrogate escape): {text[:200]!r}") from None
    return tuple(labels)
