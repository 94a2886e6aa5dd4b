"""--device -> onnxruntime execution providers, and the check of what is really active.

`auto` asks for CUDAExecutionProvider (then CPU) and, when a session comes up without CUDA, logs one
line and asks only for CPU from then on (so onnxruntime's own error about missing CUDA libraries
appears once, not once per model). `cuda` makes a session without an active CUDA provider a
start-up error. What is active always comes from `session.get_providers()`, never from the request.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from typing import Callable

import onnxruntime as ort

from server.errors import StartupError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")


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


class ProviderPolicy:
    """Decides which providers each new session asks for, and checks what each one got.

    One instance per server: it remembers an `auto` fallback so later sessions skip CUDA.
    """

    def __init__(self, device: str, driver_present: Callable[[], bool] = cuda_driver_present):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self.device = device
        self._cuda_usable = device != "cpu"
        self._preloaded = False
        self._lock = threading.Lock()
        if self._cuda_usable and CUDA not in ort.get_available_providers():
            self._not_available(f"this onnxruntime build has no {CUDA} "
                                f"(available: {', '.join(ort.get_available_providers())})")
        elif self._cuda_usable and not driver_present():
            self._not_available(f"{CUDA} cannot come up: no NVIDIA driver on this host "
                                "(libcuda.so.1 does not load)")

    def requested(self) -> list[str]:
        """The providers the next session should ask for, best first."""
        with self._lock:
            if not self._cuda_usable:
                return [CPU]
            self._preload_once()
            return [CUDA, CPU]

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

    def _not_available(self, reason: str) -> None:
        self._cuda_usable = False
        if self.device == "cuda":
            raise StartupError(f"--device cuda: {reason}. Use --device auto to fall back to the "
                               "CPU, or --device cpu.")
        log.warning("--device auto: falling back to %s: %s", CPU, reason)

    def _preload_once(self) -> None:
        """onnxruntime-gpu finds pip-installed CUDA/cuDNN libraries only after preload_dlls()."""
        if self._preloaded:
            return
        self._preloaded = True
        try:
            ort.preload_dlls()
            log.info("onnxruntime.preload_dlls(): done")
        except Exception as e:  # noqa: BLE001 - hosts without CUDA libraries fail here in many ways
            log.warning("onnxruntime.preload_dlls() failed (%s: %s); CUDA may not come up",
                        type(e).__name__, e)
