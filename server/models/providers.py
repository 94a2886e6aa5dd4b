"""--device -> the execution providers each session asks for, and the check of what is really
active (the CUDA set-up itself is shared with the exporter: execution_providers.py).

`auto` asks for CUDAExecutionProvider (then CPU) and, when a session comes up without CUDA, logs one
line and asks only for CPU from then on (so onnxruntime's own error about missing CUDA libraries
appears once, not once per model). `cuda` makes a session without an active CUDA provider a
start-up error. What is active always comes from `session.get_providers()`, never from the request.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import onnxruntime as ort

import model_contract as mc
from execution_providers import (CPU, CUDA, CudaOptions, cuda_driver_present,
                                 preload_cuda_libraries)
from server.errors import StartupError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


class ProviderPolicy:
    """Decides which providers each new session asks for, and checks what each one got.

    One instance per server: it remembers an `auto` fallback so later sessions skip CUDA.
    """

    def __init__(self, device: str, driver_present: Callable[[], bool] = cuda_driver_present,
                 cuda: CudaOptions = CudaOptions()):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if device == "cpu" and cuda.tf32:
            raise ValueError("--cuda-tf32 sets the CUDA provider's math, and --device cpu uses "
                             "none: drop it, or serve with --device cuda or auto")
        self.device = device
        self.cuda = cuda
        self._cuda_usable = device != "cpu"
        self._lock = threading.Lock()
        if self._cuda_usable:
            log.info("CUDA provider options: %s", cuda.describe())
        if self._cuda_usable and CUDA not in ort.get_available_providers():
            self._not_available(f"this onnxruntime build has no {CUDA} "
                                f"(available: {', '.join(ort.get_available_providers())})")
        elif self._cuda_usable and not driver_present():
            self._not_available(f"{CUDA} cannot come up: no NVIDIA driver on this host "
                                "(libcuda.so.1 does not load)")

    def requested(self) -> list:
        """The providers the next session should ask for, best first (CUDA with its options)."""
        with self._lock:
            if not self._cuda_usable:
                return [CPU]
        preload_cuda_libraries()
        return [self.cuda.provider(), CPU]

    def check(self, active: list[str], what: str) -> str:
        """Given a session's `get_providers()`, return the provider in use (or fail for `cuda`)."""
        provider = active[0] if active else "unknown"
        if self.device != "cpu" and provider != CUDA:
            with self._lock:
                if self._cuda_usable:
                    self._not_available(f"{CUDA} was asked for but {what} came up with "
                                        f"{provider} (no GPU, or CUDA/cuDNN libraries not found; "
                                        "onnxruntime's own message above says which)")
        return provider

    def probe_tolerance(self, meta: mc.ModelMetadata, provider: str) -> float:
        """What a model's probe is held to on `provider`: its own tolerance, widened for an fp32
        model on CUDA with TF32 on."""
        if provider == CUDA:
            return max(meta.probe_tolerance, self.cuda.fp32_tolerance())
        return meta.probe_tolerance

    def _not_available(self, reason: str) -> None:
        self._cuda_usable = False
        if self.device == "cuda":
            raise StartupError(f"--device cuda: {reason}. Use --device auto to fall back to the "
                               "CPU, or --device cpu.")
        log.warning("--device auto: falling back to %s: %s", CPU, reason)
