"""Precision variants of an exported model: INT8 for CPUs, FP16 for GPUs (`--variants int8,fp16`).

A variant keeps the fp32 model's contract (uint8 `image` in, float32 `logits`/`probabilities`
out; the preprocessing and the softmax stay float) and is written beside it in the same version
folder, in the same atomic publish, only when it passes the gate: on the export's test images its
accuracy is at most `max_drop` points below the fp32 ONNX model's and it picks the fp32 model's
class on at least `min_agreement` of them; with `min_speedup` (--variant-min-speedup) it must also
run at least that many times as fast as fp32 at batch 32 where it was measured. Otherwise it is
not written and the report says why. Quantized is not always faster: on a CPU whose fp32 kernels
are strong (AVX-512, AMX) a small network's INT8 file can run at 0.4-0.9x of fp32, since the
Quantize/Dequantize steps cost more than the int8 products save; such a variant is written with a
warning unless `min_speedup` refuses it, because only the machine that serves it can say.

INT8: onnxruntime's static quantization, QDQ format. The recipe is chosen per architecture by
measurement, never on test images: each candidate (INT8_RECIPES: activation type, per-channel,
calibration method, reduce-range, first/last layer kept float) is calibrated on `calibration`
training images and scored on other training images by top-1 agreement with fp32 (then by
batch-32 speed); only the chosen one meets the test set, once, at the gate.

FP16: onnxruntime.transformers.float16 (shipped with onnxruntime) with keep_io_types, checked on
the CUDA provider against the fp32 model there; without CUDA it is not written (one line says so).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

import model_contract as contract
from exporter import metadata
from exporter.parity import cpu_session, probe
from model_contract import ModelMetadata
import execution_providers as providers  # torch-free: one CUDA set-up for export and serving

MAX_DROP_POINTS = 0.5       # accuracy may fall at most this many points (0.5 = 0.005) below fp32
MIN_AGREEMENT = 0.99        # top-1 agreement with the fp32 model, at least
CALIBRATION_IMAGES = 512
SELECTION_IMAGES = 1000     # training images (not the calibration ones) that rank the recipes
FP16_MAX_ABS_DIFF_PROB = 1e-2  # FP16 vs fp32, both on CUDA: largest |Δ probability|
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")


@dataclass(frozen=True)
class Gate:
    """What a variant must show on the export's test images to be written. `min_speedup`: its
    batch-32 speed over fp32's, on the machine that exports (None: written however fast; one
    whose speed-up is below 1 is then written with a warning)."""

    max_drop_points: float = MAX_DROP_POINTS
    min_agreement: float = MIN_AGREEMENT
    min_speedup: float | None = None


@dataclass(frozen=True)
class Reference:
    """The fp32 model a variant is made from and judged against."""

    model: onnx.ModelProto
    session: ort.InferenceSession   # the fp32 file on the CPU provider
    metadata: ModelMetadata         # the fp32 file's record; a variant's starts from it
    test_images: np.ndarray         # uint8, the export's test images
    test_labels: np.ndarray
    test_logits: np.ndarray         # fp32's logits on them (CPU provider)
    train_images: torch.Tensor      # INT8 calibration and recipe ranking: never the test images


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: QDQ with signed int8 weights; activations int8 (S8S8) or uint8 (U8S8)."""

    name: str
    activations: str = "s8"      # "s8" | "u8"
    per_channel: bool = True
    calibration: str = "minmax"  # "minmax" | "entropy" | "percentile"
    reduce_range: bool = False   # 7-bit weights: avoids u8*s8 saturation on AVX2 without VNNI
    float_ends: bool = False     # keep the first conv and the last layer in float

    def as_dict(self) -> dict:
        return {"format": "QDQ", "weights": "s8", **asdict(self)}


# The candidates. Measured on resnet18 (512 calibration images, agreement with fp32 on 1,000 other
# training images, batch-32 img/s; fp32: 154) on a 2-core EPYC with AVX-512 VNNI, onnxruntime 1.31:
# s8s8 minmax 97.8% 63, s8s8 percentile + float ends 98.9% 53 (S8S8 activations take a slow path
# there), u8s8 minmax + reduce-range + float ends 98.7% 264, u8s8 minmax + float ends 99.4% 275.
# Reduce-range (7-bit weights) only pays on AVX2 without VNNI, where u8*s8 products saturate; the
# ranking keeps it in the list for those machines. Entropy calibration is left out of the default
# list: minutes of histogramming on resnet18 for no better agreement than percentile.
INT8_RECIPES = (
    Recipe("u8s8-pc-minmax", activations="u8"),
    Recipe("u8s8-pc-minmax-float-ends", activations="u8", float_ends=True),
    Recipe("u8s8-pc-percentile-float-ends", activations="u8", calibration="percentile",
           float_ends=True),
    Recipe("u8s8-pc-minmax-reduce-range", activations="u8", reduce_range=True),
    Recipe("s8s8-pc-minmax"),
    Recipe("s8s8-pc-percentile-float-ends", calibration="percentile", float_ends=True),
)
RECIPES_BY_NAME = {r.name: r for r in (
    *INT8_RECIPES, Recipe("s8s8-pc-percentile", calibration="percentile"),
    Recipe("s8s8-pc-minmax-float-ends", float_ends=True),
    Recipe("u8s8-pc-entropy", activations="u8", calibration="entropy"),
    Recipe("u8s8-pt-minmax", activations="u8", per_channel=False))}


@dataclass(frozen=True)
class Variant:
    """What happened to one variant: written (with its bytes and metadata) or not, and why."""

    variant: str
    written: bool
    reason: str = ""                         # why it was not written; "" when it was
    figures: dict = field(default_factory=dict)  # accuracy, agreement, speed, recipe, candidates
    model_bytes: bytes | None = field(default=None, repr=False)
    warning: str = ""                        # written, but something a person should know

    def as_report(self) -> dict:
        return {"variant": self.variant, "written": self.written, "reason": self.reason,
                "warning": self.warning or None,
                "file": contract.variant_file(self.variant) if self.written else None,
                "file_bytes": len(self.model_bytes) if self.model_bytes else None, **self.figures}

    def line(self, arch: str) -> str:
        """What the export prints about this variant."""
        if not self.written:
            return f"{arch}: {self.variant} not written: {self.reason}"
        f, recipe = self.figures, self.figures["recipe"]
        return (f"{arch}: {self.variant} written ({recipe.get('name', recipe.get('converter'))}: "
                f"accuracy {f['accuracy']:.4f} vs fp32 {f['fp32_accuracy']:.4f}, agreement "
                f"{f['fp32_agreement']:.2%}, batch 32 {f['speed']['batch32']['ratio']:.2f}x fp32)")


# --- helpers -------------------------------------------------------------------------------------

def logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    return np.concatenate([session.run([contract.LOGITS], {contract.INPUT: images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)] or
                          [np.zeros((0, contract.NUM_CLASSES), np.float32)])


def images_per_second(session: ort.InferenceSession, batch: int, seconds: float = 0.6) -> float:
    """Best of three turns of seconds/3 each, after one warm-up call."""
    side = contract.SIDE
    x = np.random.default_rng(0).integers(0, 256, (batch, 1, side, side), dtype=np.uint8)
    session.run([contract.LOGITS], {contract.INPUT: x})
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - start < seconds / 3:
            session.run([contract.LOGITS], {contract.INPUT: x})
            calls += 1
        best = max(best, calls * batch / (time.perf_counter() - start))
    return best


def cpu() -> dict:
    """This machine's CPU model and its vector/matrix ISA flags (ISA_FLAGS it has)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or "unknown",
            "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}


def speed(fp32: ort.InferenceSession, variant: ort.InferenceSession) -> dict:
    """img/s of both at batch 1 and 32, their ratio, and where it was measured."""
    out: dict = {"provider": variant.get_providers()[0], "cpu": cpu()}
    for batch in (1, 32):
        a, b = images_per_second(fp32, batch), images_per_second(variant, batch)
        out[f"batch{batch}"] = {"fp32": round(a, 1), "variant": round(b, 1),
                                "ratio": round(b / a, 3)}
    return out


def training_slices(train_images: torch.Tensor, calibration: int, selection: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random training images for calibration and for ranking recipes. With too few
    images (tests' tiny data set) the ranking reuses the calibration images."""
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    calib = train_images[order[:calibration]].numpy()
    rest = order[calibration:calibration + selection]
    select = train_images[rest].numpy() if len(rest) else calib
    return calib, select


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _misses(accuracy: float, fp32_accuracy: float, agreement: float, images: int,
            gate: Gate) -> list[str]:
    drop = (fp32_accuracy - accuracy) * 100
    out = []
    if not drop <= gate.max_drop_points:
        out.append(f"accuracy {accuracy:.4f} is {drop:.2f} points below fp32's {fp32_accuracy:.4f} "
                   f"(limit {gate.max_drop_points:g}) on {images} test images")
    if not agreement >= gate.min_agreement:
        out.append(f"top-1 agreement with fp32 {agreement:.2%} < {gate.min_agreement:.2%} on "
                   f"{images} test images")
    return out


def _where(speed_figures: dict) -> str:
    if speed_figures["provider"] == "CPUExecutionProvider":
        c = speed_figures["cpu"]
        return f"on this CPU ({c['model']}; {' '.join(c['isa']) or 'no AVX2'})"
    return f"on {speed_figures['provider']}"


@dataclass(frozen=True)
class _Candidate:
    """A variant built and ready to be judged, with the fp32 model it is judged against: both on
    the provider the variant is meant for (INT8: CPU; FP16: CUDA)."""

    name: str                            # "int8" | "fp16"
    model: onnx.ModelProto               # its graph, without metadata
    session: ort.InferenceSession
    fp32_session: ort.InferenceSession
    fp32_logits: np.ndarray              # fp32's test logits on that provider
    recipe: dict                         # fmnist.variant_recipe
    label: str = ""                      # how a refusal names what was tried ("with recipe ...")
    # its own gate on its test logits: (figures for the report, what it misses)
    checks: Callable[[np.ndarray], tuple[dict, list[str]]] = lambda logits: ({}, [])


def _judge(c: _Candidate, ref: Reference, gate: Gate, figures: dict) -> Variant:
    """Gate `c` on the test images, then on its speed; build the file when it passes."""
    out, labels = logits(c.session, ref.test_images), ref.test_labels
    accuracy = float((out.argmax(1) == labels).mean())
    fp32_accuracy = float((c.fp32_logits.argmax(1) == labels).mean())
    agreement = float((out.argmax(1) == c.fp32_logits.argmax(1)).mean())
    figures = {**figures, "accuracy": round(accuracy, 4), "fp32_accuracy": round(fp32_accuracy, 4),
               "fp32_agreement": round(agreement, 6),
               "drop_points": round((fp32_accuracy - accuracy) * 100, 3),
               "test_images": len(labels),
               "max_abs_diff_logits": float(np.abs(out - c.fp32_logits).max(initial=0.0))}
    own_figures, own_misses = c.checks(out)
    figures |= own_figures
    missed = _misses(accuracy, fp32_accuracy, agreement, len(labels), gate) + own_misses
    if missed:
        return Variant(c.name, False, f"gate missed{c.label}: " + "; ".join(missed), figures)
    figures["speed"] = speed(c.fp32_session, c.session)
    ratio, where = figures["speed"]["batch32"]["ratio"], _where(figures["speed"])
    if gate.min_speedup is not None and not ratio >= gate.min_speedup:
        return Variant(c.name, False, f"it runs at {ratio:.2f}x fp32's speed at batch 32 {where}, "
                       f"below --variant-min-speedup {gate.min_speedup:g}", figures)
    record = replace(ref.metadata, max_abs_diff=None, top1_agreement=None, variant=c.name,
                     variant_recipe=c.recipe, test_accuracy=accuracy, test_images=len(labels),
                     fp32_accuracy=fp32_accuracy, fp32_agreement=agreement,
                     variant_speed=figures["speed"], probe=probe(c.session, ref.test_images))
    metadata.attach(c.model, record)
    warning = ("" if ratio >= 1 else
               f"{c.name} is written but runs at {ratio:.2f}x fp32's speed at batch 32 {where}: "
               f"fp32 serves faster here (--variant-min-speedup 1 skips such variants)")
    return Variant(c.name, True, "", figures, c.model.SerializeToString(), warning)


# --- INT8 ----------------------------------------------------------------------------------------

class _Reader:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, 64 at a time."""

    def __init__(self, images: np.ndarray):
        self._batches = iter([images[i:i + 64] for i in range(0, len(images), 64)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {contract.INPUT: batch}


def _float_nodes(model: onnx.ModelProto, recipe: Recipe) -> list[str]:
    """Nodes left in float: the preprocessing (everything before the first Conv/Gemm/MatMul: cast,
    scale, resize) and the softmax always; the first and last weighted layer with float_ends."""
    nodes = list(model.graph.node)
    weighted = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "Gemm", "MatMul")]
    first = weighted[0] if weighted else 0
    keep = [n.name for n in nodes[:first]] + [n.name for n in nodes if n.op_type == "Softmax"]
    if recipe.float_ends and weighted:
        keep += [nodes[weighted[0]].name, nodes[weighted[-1]].name]
    return keep


@contextlib.contextmanager
def _quiet():
    """The quantizer prints its histogram progress and logs a pre-processing hint on the root
    logger for every call; the export's own lines say what matters. (Its pre-processing, shape
    inference and graph optimization, is what to_onnx.optimize already did to this graph.)"""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize(model: onnx.ModelProto, recipe: Recipe, calibration: np.ndarray) -> onnx.ModelProto:
    """The QDQ model `recipe` makes of `model`, calibrated on `calibration` (uint8 images)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):  # exclusion works by name; the export names all,
        node.name = node.name or f"node_{i}"     # but never rely on it
    del model.metadata_props[:]
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="fmnist-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        with _quiet():
            quantize_static(
                str(src), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                activation_type=(QuantType.QInt8 if recipe.activations == "s8"
                                 else QuantType.QUInt8),
                weight_type=QuantType.QInt8, nodes_to_exclude=_float_nodes(model, recipe),
                calibrate_method=methods[recipe.calibration],
                extra_options={"ActivationSymmetric": recipe.activations == "s8"},
            )
        return onnx.load(str(dst))


def int8(ref: Reference, gate: Gate = Gate(), recipes: tuple[Recipe, ...] = INT8_RECIPES,
         calibration: int = CALIBRATION_IMAGES, log: Callable[[str], None] = print) -> Variant:
    """Rank `recipes` on training images, gate the best on the test images, build the file."""
    calib, select = training_slices(ref.train_images, calibration, SELECTION_IMAGES)
    candidates, best = _rank(ref, recipes, calib, select, log)
    figures: dict = {"calibration_images": len(calib), "selection_images": len(select),
                     "candidates": candidates}
    if best is None:
        return Variant("int8", False, "no recipe could be applied: " + "; ".join(
            f"{c['recipe']}: {c['error']}" for c in candidates), figures)
    recipe, quantized, session = best
    figures["recipe"] = recipe.as_dict()
    return _judge(_Candidate(
        "int8", quantized, session, ref.session, ref.test_logits,
        {**recipe.as_dict(), "calibration_images": len(calib),
         "calibration_source": "training images (seeded random)"},
        label=f" with recipe {recipe.name}"), ref, gate, figures)


def _rank(ref: Reference, recipes: tuple[Recipe, ...], calib: np.ndarray, select: np.ndarray,
          log: Callable[[str], None]) -> tuple[list[dict], tuple | None]:
    """Each recipe's figures on the selection images, and the best (recipe, model, session): the
    highest agreement with fp32 (to 0.1%), then the fastest at batch 32."""
    fp32_select = logits(ref.session, select).argmax(1)
    candidates, best, best_key = [], None, None
    for recipe in recipes:
        started = time.perf_counter()
        try:
            q = quantize(ref.model, recipe, calib)
            session = cpu_session(q.SerializeToString())
        except Exception as err:  # noqa: BLE001 - a recipe the quantizer cannot apply is skipped
            candidates.append({"recipe": recipe.name, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        agreement = float((logits(session, select).argmax(1) == fp32_select).mean())
        rate = images_per_second(session, 32, 0.3)
        candidates.append({"recipe": recipe.name, "selection_agreement": round(agreement, 4),
                           "batch32_images_per_s": round(rate, 1),
                           "seconds": round(time.perf_counter() - started, 1)})
        log(f"  int8 candidate {recipe.name}: agreement with fp32 {agreement:.2%} on "
            f"{len(select)} training images, {rate:.0f} img/s at batch 32")
        key = (round(agreement, 3), rate)
        if best_key is None or key > best_key:
            best, best_key = (recipe, q, session), key
    return candidates, best


# --- FP16 ----------------------------------------------------------------------------------------

def cuda_available() -> bool:
    """onnxruntime has the CUDA provider and the NVIDIA driver loads (the server's own check)."""
    return providers.cuda_usable()


def cuda_session(model_bytes: bytes) -> ort.InferenceSession | None:
    """A session on the CUDA provider set up as the server sets it up (TF32 off, so FP16 is
    judged against full fp32), or None when CUDA does not take this model or is not here."""
    return providers.cuda_session(model_bytes)


def fp16(ref: Reference, gate: Gate = Gate()) -> Variant:
    """Convert with keep_io_types; gate it against the fp32 model, both on CUDA."""
    fp32_cuda = cuda_session(ref.model.SerializeToString())
    if fp32_cuda is None:
        return Variant("fp16", False, "no CUDA provider on this machine: FP16 is checked on CUDA "
                       "only, so it is not written")
    from onnxruntime.transformers.float16 import convert_float_to_float16
    half = convert_float_to_float16(onnx.ModelProto.FromString(ref.model.SerializeToString()),
                                    keep_io_types=True)
    del half.metadata_props[:]
    session = cuda_session(half.SerializeToString())
    if session is None:
        return Variant("fp16", False, "onnxruntime did not put the FP16 model on the CUDA provider "
                       "(the fp32 model runs there): FP16 is checked on CUDA only, so it is not "
                       "written")
    reference = logits(fp32_cuda, ref.test_images)
    recipe = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}

    def probabilities_close(out: np.ndarray) -> tuple[dict, list[str]]:
        diff = float(np.abs(_softmax(out) - _softmax(reference)).max(initial=0.0))
        return {"max_abs_diff_probabilities": diff}, (
            [] if diff <= FP16_MAX_ABS_DIFF_PROB else
            [f"max |Δ probability| against fp32 on CUDA {diff:.3g} > {FP16_MAX_ABS_DIFF_PROB:g}"])

    return _judge(_Candidate("fp16", half, session, fp32_cuda, reference, recipe,
                             checks=probabilities_close), ref, gate,
                  {"recipe": recipe, "parity_provider": providers.CUDA})
