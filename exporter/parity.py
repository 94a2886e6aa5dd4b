"""The compare step: the ONNX model in onnxruntime (CPU) against the unfolded PyTorch model.

Both see the same uint8 test images and both include the preprocessing, so any difference comes
from the folding, the export or the runtime. One pass over the test set gives everything: the
largest logit difference, top-1 agreement, and the ONNX model's own accuracy (the number that goes
into its metadata). The PyTorch side is the slow one on a CPU (alexnet, vgg11 and nin see 224x224
images): it runs under inference_mode on a channels-last copy, which oneDNN convolves ~1.4x faster.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

import model_contract as contract
from exporter.wrap import Servable

MAX_ABS_DIFF = 1e-4
MIN_AGREEMENT = 0.9995


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float      # largest |logit difference| over every image and class
    top1_agreement: float    # share of images where both pick the same class
    disagreements: int
    onnx_accuracy: float
    torch_accuracy: float

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_session(model_bytes: bytes,
                level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                ) -> ort.InferenceSession:
    """An onnxruntime session on the CPU provider, graph optimizations at `level` (the default is
    what the server runs)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3  # errors only: the CPU-only warnings are noise here
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def measure_logits(session: ort.InferenceSession, reference: Servable, images: torch.Tensor,
                   labels: torch.Tensor, batch_size: int = 100,
                   desc: str | None = None) -> tuple[Parity, np.ndarray]:
    """Run both models over `images` (uint8 [N, 1, 28, 28]) in batches; `desc` shows a progress
    bar. Returns the comparison and the ONNX model's logits (the precision variants are compared
    with them).

    One runtime after the other, not batch by batch in turns: their thread pools spin-wait after
    each call, and taking turns makes each wait on the other's spinning (3x slower on 2 cores)."""
    with tqdm(total=2 * len(images), desc=desc, unit="img", disable=desc is None,
              leave=False) as bar:
        onnx_logits = _onnx_logits(session, images, batch_size, bar)
        torch_logits = _torch_logits(reference, images, batch_size, bar)
    onnx_top, torch_top, truth = onnx_logits.argmax(1), torch_logits.argmax(1), labels.numpy()
    n, same = len(images), int((onnx_top == torch_top).sum())
    return Parity(n, float(np.abs(onnx_logits - torch_logits).max(initial=0.0)), same / n, n - same,
                  float((onnx_top == truth).mean()), float((torch_top == truth).mean())), onnx_logits


def _onnx_logits(session: ort.InferenceSession, images: torch.Tensor, batch_size: int,
                 bar: tqdm) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].numpy()
        out.append(session.run([contract.LOGITS], {contract.INPUT: batch})[0])
        bar.update(len(batch))
    return np.concatenate(out)


def _torch_logits(reference: Servable, images: torch.Tensor, batch_size: int,
                  bar: tqdm) -> np.ndarray:
    reference = copy.deepcopy(reference).eval().to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            out.append(reference(batch)[0].numpy())
            bar.update(len(batch))
    return np.concatenate(out)


def probe(session: ort.InferenceSession, images: np.ndarray) -> str:
    """The `fmnist.probe` value: the first PROBE_IMAGES of `images` (uint8) and the probabilities
    this session (the file to be written, on the provider it was checked on) gives for them in one
    batch. The server runs them on the provider it serves with, so a file or provider that answers
    differently from what was checked here is refused where it is served
    (model_contract.PROBE_TOLERANCE, VARIANT_PROBE_TOLERANCE)."""
    batch = np.ascontiguousarray(images[:contract.PROBE_IMAGES])
    (probabilities,) = session.run([contract.PROBABILITIES], {contract.INPUT: batch})
    return contract.encode_probe(batch, probabilities)


def failures(parity: Parity, max_abs_diff: float = MAX_ABS_DIFF,
             min_agreement: float = MIN_AGREEMENT) -> list[str]:
    """The thresholds a parity result misses, each with its figures; empty when it passes."""
    out = []
    if not parity.max_abs_diff <= max_abs_diff:  # also catches NaN
        out.append(f"max |Δ logits| {parity.max_abs_diff:.3g} > {max_abs_diff:g}")
    if not parity.top1_agreement >= min_agreement:
        out.append(f"top-1 agreement {parity.top1_agreement:.4%} < {min_agreement:.4%} "
                   f"({parity.disagreements} of {parity.images} images differ)")
    return out
