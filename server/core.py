"""The transport-free core: validate a request, decode its images, run the model, take the top k.

It never imports grpc: requests arrive as plain Python values, results leave as dataclasses, and
problems leave as `server.errors` exceptions that carry their status code. The servicer translates.

    core = Core(load_models(...), Limits())
    result = core.classify("lenet_bn", 0, [ImageData("encoded", png_bytes)], top_k=3)
    result.classifications[0][0].label   # 'Ankle boot'
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from server import decode
from server.errors import (Cancelled, DeadlineExceeded, DecodeError, InvalidImage, InvalidRequest,
                           ModelNotFound, Overloaded, Unavailable)
from server.store import LoadedModel

log = logging.getLogger("server.core")

MAX_TOP_K = 10


@dataclass(frozen=True)
class Limits:
    """What the server enforces (ListModels tells clients, so they can size their batches)."""

    max_images_per_request: int = 64
    max_image_pixels: int = decode.DEFAULT_MAX_PIXELS
    max_message_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 32  # Classify requests being worked on at once; beyond: RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class ImageData:
    kind: str  # "encoded", "raw", or "" when the request set neither
    data: bytes


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    classifications: list[list[Prediction]]  # per image, top_k predictions, best first


@dataclass(frozen=True)
class ModelView:
    name: str
    version: int
    input_side: int
    labels: tuple[str, ...]
    test_accuracy: float
    provider: str
    test_images: int


class CallContext(Protocol):
    """What the core needs to know about the caller (the servicer adapts grpc's context)."""

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline, or None without a deadline."""
        ...

    def is_active(self) -> bool:
        """False once the caller has cancelled or gone away."""
        ...


class _NoDeadline:
    def time_remaining(self) -> float | None:
        return None

    def is_active(self) -> bool:
        return True


class Core:
    """Holds the loaded models; `classify` and `list_models` are the whole API."""

    def __init__(self, models: Sequence[LoadedModel], limits: Limits = Limits()):
        self.limits = limits
        self._models: dict[str, dict[int, LoadedModel]] = {}
        for m in models:
            self._models.setdefault(m.spec.name, {})[m.spec.version] = m
        self._run_seconds: dict[tuple[str, int], float] = {}  # moving average per model version
        self._in_flight = 0
        self._lock = threading.Lock()
        self._draining = False

    # --- the API ----------------------------------------------------------------------------

    def list_models(self) -> list[ModelView]:
        return [ModelView(m.spec.name, m.spec.version, m.spec.input_side, m.spec.labels,
                          m.spec.test_accuracy, m.provider, m.spec.test_images)
                for versions in self._models.values() for m in versions.values()]

    def classify(self, model: str, version: int, images: Sequence[ImageData], top_k: int = 1,
                 inversion: str = "auto", call: CallContext | None = None) -> ClassifyResult:
        call = call or _NoDeadline()
        top_k = self._check_top_k(top_k)
        if inversion not in decode.INVERSIONS:
            raise InvalidRequest(f"inversion must be one of {', '.join(decode.INVERSIONS)}, "
                                 f"got {inversion!r}")
        loaded = self._find(model, version)
        self._check_count(len(images))
        with self._slot():
            self._check_call(call, loaded, when="before decoding")
            batch = self._decode_all(images, inversion, call)
            self._check_call(call, loaded, when="before running the model")
            probabilities = self._run(loaded, batch)
        return ClassifyResult(loaded.spec.name, loaded.spec.version,
                              [self._top(loaded, row, top_k) for row in probabilities])

    def drain(self) -> None:
        """From now on, new Classify requests get UNAVAILABLE; requests in flight go on.

        Under the slot lock, so that once this returns `in_flight` counts every request that
        will ever run: none can slip in between a check and the count."""
        with self._lock:
            self._draining = True

    def close(self) -> None:
        for versions in self._models.values():
            for m in versions.values():
                m.runner.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- steps ------------------------------------------------------------------------------

    def served(self) -> str:
        if not self._models:
            return "none (the server has no models)"
        return ", ".join(f"{name} (versions {', '.join(map(str, sorted(v)))})"
                         for name, v in sorted(self._models.items()))

    def _find(self, model: str, version: int) -> LoadedModel:
        if not model:
            raise InvalidRequest(f"model is required; served models: {self.served()}")
        versions = self._models.get(model)
        if versions is None:
            raise ModelNotFound(f"model {model!r} is not served; served models: {self.served()}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(f"model {model!r} version {version} is not served; served models: "
                                f"{self.served()}")
        return versions[version]

    @staticmethod
    def _check_top_k(top_k: int) -> int:
        if not 0 <= top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be 0..{MAX_TOP_K} (0 means 1), got {top_k}")
        return top_k or 1

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidRequest("no images in the request")
        if n > self.limits.max_images_per_request:
            raise InvalidRequest(f"{n} images is over the limit of "
                                 f"{self.limits.max_images_per_request} per request; split them")

    @contextlib.contextmanager
    def _slot(self):
        """Count this request as in flight, or refuse it when draining or at the limit."""
        with self._lock:
            if self._draining:
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._in_flight >= self.limits.max_in_flight:
                raise Overloaded(f"the server is at its limit of {self.limits.max_in_flight} "
                                 "requests in flight; retry later")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _check_call(self, call: CallContext, loaded: LoadedModel, when: str) -> None:
        if not call.is_active():
            raise Cancelled(f"the caller cancelled the request {when}")
        remaining = call.time_remaining()
        if remaining is None:
            return
        needed = self._run_seconds.get((loaded.spec.name, loaded.spec.version), 0.0)
        if remaining <= needed:
            raise DeadlineExceeded(
                f"the deadline leaves {max(remaining, 0.0) * 1000:.1f} ms {when}, and a run of "
                f"{loaded.spec.name} v{loaded.spec.version} takes about {needed * 1000:.1f} ms")

    def _decode_all(self, images: Sequence[ImageData], inversion: str,
                    call: CallContext) -> np.ndarray:
        batch = np.empty((len(images), 1, decode.SIDE, decode.SIDE), np.uint8)
        for i, image in enumerate(images):
            if i and not call.is_active():
                raise Cancelled(f"the caller cancelled the request while image {i} was decoded")
            try:
                if image.kind == "raw":
                    batch[i, 0] = decode.decode_raw(image.data)
                elif image.kind == "encoded":
                    batch[i, 0] = decode.decode_encoded(image.data, inversion,
                                                        self.limits.max_image_pixels)
                else:
                    raise DecodeError("no image data: set `encoded` or `raw`")
            except DecodeError as e:
                raise InvalidImage(i, str(e)) from None
        return batch

    def _run(self, loaded: LoadedModel, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        probabilities = loaded.runner.run(batch).probabilities
        if probabilities.shape != (len(batch), len(loaded.spec.labels)):
            raise RuntimeError(f"{loaded.spec.name} v{loaded.spec.version} returned probabilities "
                               f"of shape {probabilities.shape} for {len(batch)} images")
        key = (loaded.spec.name, loaded.spec.version)
        seconds = time.perf_counter() - started
        self._run_seconds[key] = 0.8 * self._run_seconds.get(key, seconds) + 0.2 * seconds
        return probabilities

    @staticmethod
    def _top(loaded: LoadedModel, row: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-row, kind="stable")[:k]
        return [Prediction(int(c), loaded.spec.labels[c], float(row[c])) for c in order]
