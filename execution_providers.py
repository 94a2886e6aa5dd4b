"""How every onnxruntime session of the project is set up on CUDA, for export and serving alike:
the execution providers' names, CudaOptions, and the checks of what this host offers. Torch-free
and server-free: the exporter's FP16 parity check, the server (server/models/providers.py, which
decides what --device asks for) and `make gpu-check` all set up CUDA here.

The options (docs/gpu.md says why each is chosen):
- use_tf32=0 unless asked for (--cuda-tf32). onnxruntime's default is 1: on Ampere and newer its
  fp32 Conv/Gemm/MatMul then run on TF32 tensor cores, whose operands keep 10 mantissa bits, as
  fp16's do. The fp32 probe tolerance (model_contract.PROBE_TOLERANCE, 1e-3) assumes full fp32;
  with TF32 the server holds fp32 models to TF32_PROBE_TOLERANCE instead.
- cudnn_conv_algo_search=EXHAUSTIVE: cuDNN times every convolution algorithm on a shape's first
  run and keeps the fastest. Its cost falls on warm-up only, because the batcher pads CUDA batches
  to fixed buckets and warms each one (server/batching/batcher.py).
- arena_extend_strategy=kSameAsRequested: each session has its own memory arena; onnxruntime's
  default (kNextPowerOfTwo) rounds every growth up to a power of two, which with a dozen models
  loaded reserves up to twice the memory they use. Padded buckets ask for the same sizes again and
  again, so after warm-up the arena stops growing either way.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnxruntime as ort

import model_contract as mc

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# fp32 models on CUDA with TF32 (--cuda-tf32): TF32 rounds operands to fp16's 10-bit mantissa and
# accumulates in fp32, so it is held to the FP16 variant's tolerance. A bound by that argument,
# not yet a measurement: `make gpu-check` measures the difference on a GPU (docs/gpu.md).
TF32_PROBE_TOLERANCE = mc.VARIANT_PROBE_TOLERANCE["fp16"]


@dataclass(frozen=True)
class CudaOptions:
    """How every CUDA session is set up (the module docstring says why)."""

    tf32: bool = False
    conv_algo_search: str = "EXHAUSTIVE"
    arena_extend_strategy: str = "kSameAsRequested"

    def provider_options(self) -> dict[str, str]:
        return {"use_tf32": "1" if self.tf32 else "0",
                "cudnn_conv_algo_search": self.conv_algo_search,
                "arena_extend_strategy": self.arena_extend_strategy}

    def provider(self) -> tuple[str, dict[str, str]]:
        """The entry for InferenceSession(providers=[...])."""
        return CUDA, self.provider_options()

    def fp32_tolerance(self) -> float:
        """What an fp32 model's probe is held to on CUDA with these options."""
        return TF32_PROBE_TOLERANCE if self.tf32 else mc.PROBE_TOLERANCE

    def describe(self) -> str:
        """One line for the log: the options and the probe tolerance they mean."""
        options = " ".join(f"{k}={v}" for k, v in self.provider_options().items())
        tf32 = ("TF32 on, --cuda-tf32" if self.tf32 else "TF32 off")
        return (f"{options} ({tf32}: fp32 probes on CUDA are held to max |Δ| "
                f"{self.fp32_tolerance():g}" + ("" if self.tf32 else
                                                "; --cuda-tf32 trades that for speed") + ")")


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads. Without it no CUDA session can come up, and asking
    onnxruntime for one anyway only prints its multi-line error about libcuda.so.1."""
    if sys.platform != "linux":
        return True  # let onnxruntime find out
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_usable(driver_present: Callable[[], bool] = cuda_driver_present) -> bool:
    """This onnxruntime build has the CUDA provider and the NVIDIA driver loads."""
    return CUDA in ort.get_available_providers() and driver_present()


_preloaded: list[str | None] = []  # once per process: None when preload_dlls() worked, else why
_preload_lock = threading.Lock()


def preload_cuda_libraries() -> str | None:
    """onnxruntime-gpu finds pip-installed CUDA/cuDNN libraries only after preload_dlls(); call it
    once per process. Returns None when it worked, else what went wrong (logged once)."""
    with _preload_lock:
        if not _preloaded:
            try:
                ort.preload_dlls()
                log.info("onnxruntime.preload_dlls(): done")
                _preloaded.append(None)
            except Exception as e:  # noqa: BLE001 - hosts without CUDA libraries fail in many ways
                _preloaded.append(f"{type(e).__name__}: {e}")
                log.warning("onnxruntime.preload_dlls() failed (%s); CUDA may not come up",
                            _preloaded[0])
        return _preloaded[0]


def cuda_session(model: bytes | str | Path,
                 options: CudaOptions = CudaOptions()) -> ort.InferenceSession | None:
    """A session on the CUDA provider with `options`, or None when this machine has none (no
    CUDA build, no driver, no GPU) or CUDA does not take this model (it came up on the CPU)."""
    if not cuda_usable():
        return None
    preload_cuda_libraries()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3  # errors only: onnxruntime's warnings are not ours
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   session_options, providers=[options.provider(), CPU])
    return session if session.get_providers()[0] == CUDA else None
