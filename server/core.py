"""The transport-free core: validate a request, decode its images, batch them, take the top k.

It never imports grpc: requests arrive as plain Python values, results leave as dataclasses, and
problems leave as `server.errors` exceptions that carry their status code. The servicer translates.
`classify` is a coroutine: a request waiting for its decode or its batch holds no thread.

    core = Core(load_models(...), Limits())
    core.start()                                   # warm up the batchers, start their threads
    result = await core.classify("lenet_bn", 0, [ImageData("encoded", png_bytes)], top_k=3)
    result.classifications[0][0].label             # 'Ankle boot'

Where the work happens: validation and raw images on the event loop; encoded images in a pool of
decode threads (sized to the cores), under a server-wide budget of pixels being decoded; the model
in each model version's batcher thread (server/batcher.py). Decoding and inference of different
requests overlap; a caller that goes away (the task is cancelled) stops its decode between images
and leaves the batch queue before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from server import decode
from server.batcher import Batcher, BatchPolicy
from server.budget import PixelBudget
from server.errors import (Cancelled, DeadlineExceeded, DecodeError, InvalidImage, InvalidRequest,
                           ModelNotFound, Overloaded, ServingError, Unavailable, shorten)
from server.runner import RunOutput
from server.store import LoadedModel, ModelSpec, Refusal

log = logging.getLogger("server.core")

MAX_TOP_K = 10
MAX_MODEL_NAME_BYTES = 128  # longer names are INVALID_ARGUMENT, and never echoed whole
_BUDGET_WAIT = 5.0  # seconds a decode without a deadline waits for pixel budget before refusing


@dataclass(frozen=True)
class Limits:
    """What the server enforces (ListModels tells clients, so they can size their batches)."""

    max_images_per_request: int = 64
    max_image_pixels: int = decode.DEFAULT_MAX_PIXELS
    max_request_pixels: int = 4 * decode.DEFAULT_MAX_PIXELS  # all encoded images of one request
    max_decoding_pixels: int = 2 * decode.DEFAULT_MAX_PIXELS  # being decoded at once, server-wide
    max_message_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 512  # Classify requests being worked on at once; beyond: RESOURCE_EXHAUSTED
    decode_threads: int = 0  # 0: one per core


@dataclass(frozen=True)
class Batching:
    """The batching policy of every model, with per-model overrides (--batching NAME=...)."""

    default: BatchPolicy = BatchPolicy()
    per_model: dict[str, BatchPolicy] = field(default_factory=dict)

    def policy(self, name: str) -> BatchPolicy:
        return self.per_model.get(name, self.default)


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
    probe_max_abs_diff: float | None  # None: the file has no probe (served unverified)
    variant: str = ""  # "" fp32; "int8", "fp16": served as "<arch>:<variant>"
    fp32_agreement: float | None = None
    speedup_vs_fp32: float | None = None  # batch 32, measured at load on this machine


@dataclass
class RequestEvent:
    """One request through the core, filled in as it goes and handed to `Core.observer` when it
    ends, however it ends (server/metrics.py counts and times them)."""

    protocol: str  # "fmnist.v1", "v2"
    images: int
    model: str = ""  # the version that answered; "" and 0 when it failed before one was chosen
    version: int = 0
    code: str = "OK"  # the status code name (ServingError.code, or CANCELLED, INTERNAL)
    seconds: float = 0.0  # from entering the core to the answer or the error
    decode_seconds: float | None = None  # None: nothing was decoded


class Core:
    """Holds the loaded models and their batchers; `classify` and `list_models` are the API."""

    def __init__(self, models: Sequence[LoadedModel], limits: Limits = Limits(),
                 batching: Batching = Batching(), refused: Sequence[Refusal] = (),
                 observer: Callable[[RequestEvent], None] | None = None):
        self.limits = limits
        self.refused = list(refused)  # found in the models folder but not served, and why
        self.observer = observer  # gets every request's RequestEvent (on the event loop)
        self.batching = batching
        self.on_change: list[Callable[[], None]] = []  # called after a version comes or goes
        self.on_batcher: list[Callable[[Batcher], None]] = []  # called for every new batcher
        # Replaced whole (copy on write) when versions come and go: readers need no lock.
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._batchers: dict[tuple[str, int], Batcher] = {}
        for m in models:
            self._models.setdefault(m.spec.name, {})[m.spec.version] = m
            self._batchers[(m.spec.name, m.spec.version)] = self._new_batcher(m)
        self._decoders = ThreadPoolExecutor(limits.decode_threads or os.cpu_count() or 1,
                                            thread_name_prefix="decode")
        self._pixels = PixelBudget(limits.max_decoding_pixels)
        self._in_flight = 0
        self._using: dict[tuple[str, int], int] = {}  # requests in flight per model version
        self._lock = threading.Lock()
        self._draining = False

    # --- the API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Warm every batcher's batch shapes (before the server reports SERVING), start them."""
        for batcher in self._batchers.values():
            started = time.perf_counter()
            batcher.start()
            log.info("batcher %s: max_batch=%d max_delay=%.1fms queue=%d images, warmed %s in "
                     "%.2fs", batcher.name, batcher.policy.max_batch,
                     batcher.policy.max_delay * 1000, batcher.policy.max_queue_images,
                     "padded buckets" if batcher.pad else "batch shapes",
                     time.perf_counter() - started)

    def add(self, loaded: LoadedModel) -> None:
        """Serve one more version (loaded and verified by the caller): its batcher warms up
        first, then requests are routed to it (as the newest when it is)."""
        batcher = self._new_batcher(loaded)
        batcher.start()
        for hook in self.on_batcher:
            hook(batcher)
        key = (loaded.spec.name, loaded.spec.version)
        with self._lock:
            models = {name: dict(versions) for name, versions in self._models.items()}
            models.setdefault(key[0], {})[key[1]] = loaded
            self._batchers = {**self._batchers, key: batcher}
            self._models = models
        self._changed()

    def remove(self, model: str, version: int, timeout: float = 60.0) -> None:
        """Stop routing to a version, let the requests that chose it finish (at most `timeout`
        seconds), then close its batcher and session."""
        key = (model, version)
        with self._lock:
            models = {name: dict(versions) for name, versions in self._models.items()}
            loaded = models.get(model, {}).pop(version, None)
            if loaded is None:
                return
            if not models[model]:
                del models[model]
            self._models = models
        self._changed()
        give_up = time.monotonic() + timeout
        while self._using.get(key, 0) and time.monotonic() < give_up:
            time.sleep(0.01)
        with self._lock:
            batchers = dict(self._batchers)
            batcher = batchers.pop(key)
            self._batchers = batchers
            self._using.pop(key, None)
        batcher.close()
        loaded.runner.close()

    def versions(self, model: str) -> list[int]:
        """The versions of `model` being served, oldest first."""
        return sorted(self._models.get(model, {}))

    def list_models(self) -> list[ModelView]:
        return [ModelView(m.spec.name, m.spec.version, m.spec.input_side, m.spec.labels,
                          m.spec.test_accuracy, m.provider, m.spec.test_images,
                          m.spec.probe_max_abs_diff, m.spec.variant, m.spec.fp32_agreement,
                          m.spec.speedup_vs_fp32)
                for versions in self._models.values() for m in versions.values()]

    async def classify(self, model: str, version: int, images: Sequence[ImageData],
                       top_k: int = 1, inversion: str = "auto",
                       deadline: float | None = None,
                       protocol: str = "fmnist.v1") -> ClassifyResult:
        """`deadline`: the caller's, in time.monotonic() seconds (None: no deadline).
        `protocol` names the API the request came in by, for the observer."""
        with self._observed(protocol, images) as event:
            top_k = self._check_top_k(top_k)
            spec, out = await self._answer(event, model, version, images, inversion, deadline)
            return ClassifyResult(spec.name, spec.version,
                                  [self._top(spec.labels, row, top_k) for row in out.probabilities])

    async def infer(self, model: str, version: int, images: Sequence[ImageData] | np.ndarray,
                    inversion: str = "auto", deadline: float | None = None,
                    protocol: str = "fmnist.v1") -> tuple[ModelSpec, RunOutput]:
        """Both outputs for `images`: encoded/raw images (decoded as `classify` does) or the
        model's own tensor, uint8 [n, 1, 28, 28] (the KServe v2 path). Returns the spec of the
        version that answered with its RunOutput."""
        with self._observed(protocol, images) as event:
            return await self._answer(event, model, version, images, inversion, deadline)

    async def _answer(self, event: RequestEvent, model: str, version: int,
                      images: Sequence[ImageData] | np.ndarray, inversion: str,
                      deadline: float | None) -> tuple[ModelSpec, RunOutput]:
        """`infer` without the observing; notes in `event` the version and the decode time."""
        if inversion not in decode.INVERSIONS:
            raise InvalidRequest(f"inversion must be one of {', '.join(decode.INVERSIONS)}, "
                                 f"got {inversion!r}")
        if isinstance(images, np.ndarray) and (
                images.dtype != np.uint8 or images.shape[1:] != (1, decode.SIDE, decode.SIDE)):
            raise InvalidRequest(f"the image tensor must be uint8 [n, 1, {decode.SIDE}, "
                                 f"{decode.SIDE}], got {images.dtype} {list(images.shape)}")
        self._check_count(len(images))
        with self._slot(model, version) as loaded:
            event.model, event.version = loaded.spec.name, loaded.spec.version
            _check_deadline(deadline, "before decoding")
            if isinstance(images, np.ndarray):
                batch = np.ascontiguousarray(images)
            else:
                started = time.perf_counter()
                try:
                    batch = await self._decode(images, inversion, deadline)
                finally:
                    event.decode_seconds = time.perf_counter() - started
            out = await self._infer(loaded, batch, deadline)
        return loaded.spec, out

    def drain(self) -> None:
        """From now on, new Classify requests get UNAVAILABLE; requests in flight go on.

        Under the slot lock, so that once this returns `in_flight` counts every request that
        will ever run: none can slip in between a check and the count."""
        with self._lock:
            self._draining = True

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()
        self._decoders.shutdown(wait=True, cancel_futures=True)
        for versions in self._models.values():
            for m in versions.values():
                m.runner.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def draining(self) -> bool:
        """True once `drain` was called: the server is shutting down (v2 ServerReady says so)."""
        return self._draining

    def batcher(self, model: str, version: int) -> Batcher:
        return self._batchers[(model, version)]

    def batchers(self) -> list[Batcher]:
        return list(self._batchers.values())

    def _new_batcher(self, loaded: LoadedModel) -> Batcher:
        spec = loaded.spec
        return Batcher(loaded.runner, self.batching.policy(spec.name),
                       f"{spec.name} v{spec.version}")

    def _changed(self) -> None:
        for hook in self.on_change:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a broken hook must not stop a model swap
                log.exception("model change hook failed")

    # --- steps ------------------------------------------------------------------------------

    def served(self) -> str:
        if not self._models:
            return "none (the server has no models)"
        return ", ".join(f"{name} (versions {', '.join(map(str, sorted(v)))})"
                         for name, v in sorted(self._models.items()))

    def find(self, model: str, version: int) -> LoadedModel:
        """The loaded model `model` at `version` (0: its newest); ModelNotFound names what is."""
        if not model:
            raise InvalidRequest(f"model is required; served models: {self.served()}")
        if len(model.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
            raise InvalidRequest(f"model name {shorten(model)} is over {MAX_MODEL_NAME_BYTES} "
                                 "bytes")
        versions = self._models.get(model)
        if versions is None:
            raise ModelNotFound(f"model {shorten(model)} is not served; served models: "
                                f"{self.served()}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(f"model {shorten(model)} version {version} is not served; served "
                                f"models: {self.served()}")
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
    def _observed(self, protocol: str, images: Sequence[ImageData] | np.ndarray):
        """Time one request and hand its RequestEvent to `observer` as it ends: with "OK", its
        ServingError's code, CANCELLED (the caller went away) or INTERNAL (a bug)."""
        scalar = isinstance(images, np.ndarray) and images.ndim == 0  # refused later, 0 images
        event = RequestEvent(protocol, 0 if scalar else len(images))
        started = time.perf_counter()
        try:
            yield event
        except ServingError as e:
            event.code = e.code
            raise
        except asyncio.CancelledError:
            event.code = "CANCELLED"
            raise
        except Exception:
            event.code = "INTERNAL"
            raise
        finally:
            event.seconds = time.perf_counter() - started
            if self.observer is not None:
                try:
                    self.observer(event)
                except Exception:  # noqa: BLE001 - a broken observer must not fail requests
                    log.exception("request observer failed")

    @contextlib.contextmanager
    def _slot(self, model: str, version: int):
        """Count this request as in flight on the version it resolves to, or refuse it when
        draining or at the limit. Resolving and counting under one lock is what lets `remove`
        wait for exactly the requests that chose the version it takes away."""
        with self._lock:
            if self._draining:
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._in_flight >= self.limits.max_in_flight:
                raise Overloaded(f"the server is at its limit of {self.limits.max_in_flight} "
                                 "requests in flight; retry later", retry_after=0.05)
            loaded = self.find(model, version)
            key = (loaded.spec.name, loaded.spec.version)
            self._in_flight += 1
            self._using[key] = self._using.get(key, 0) + 1
        try:
            yield loaded
        finally:
            with self._lock:
                self._in_flight -= 1
                self._using[key] -= 1

    async def _decode(self, images: Sequence[ImageData], inversion: str,
                      deadline: float | None) -> np.ndarray:
        """Raw images on the loop (a copy of 784 bytes); anything encoded in the decode pool."""
        if all(image.kind == "raw" for image in images):
            return decode_request(images, inversion, self.limits, self._pixels, deadline)
        stop = threading.Event()
        try:  # no local for the future: it holds the error, whose traceback holds this frame
            return await asyncio.get_running_loop().run_in_executor(
                self._decoders, decode_request, images, inversion, self.limits, self._pixels,
                deadline, stop)
        except asyncio.CancelledError:
            stop.set()  # the decode stops before its next image
            raise

    async def _infer(self, loaded: LoadedModel, batch: np.ndarray,
                     deadline: float | None) -> RunOutput:
        ticket = self._batchers[(loaded.spec.name, loaded.spec.version)].submit(batch, deadline)
        try:
            out = await asyncio.wrap_future(ticket.future)
        except asyncio.CancelledError:
            ticket.cancel()  # leaves the queue if it has not run yet
            raise
        except BaseException:
            del ticket  # its future holds the error, whose traceback holds this frame: a cycle
            raise
        if out.probabilities.shape != (len(batch), len(loaded.spec.labels)):
            raise RuntimeError(f"{loaded.spec.name} v{loaded.spec.version} returned probabilities "
                               f"of shape {out.probabilities.shape} for {len(batch)} images")
        return out

    @staticmethod
    def _top(labels: Sequence[str], row: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-row, kind="stable")[:k]
        return [Prediction(int(c), labels[c], float(row[c])) for c in order]


def _check_deadline(deadline: float | None, when: str) -> None:
    if deadline is not None and deadline <= time.monotonic():
        raise DeadlineExceeded(f"the deadline passed {when}")


def decode_request(images: Sequence[ImageData], inversion: str, limits: Limits,
                   pixels: PixelBudget, deadline: float | None,
                   stop: threading.Event | None = None) -> np.ndarray:
    """Every image of one request -> uint8 [n, 1, 28, 28]; runs on a decode thread.

    All headers are read first, so a request over its pixel budget is refused before a single
    pixel is decoded; then each image decodes under the server-wide pixel budget."""
    batch = np.empty((len(images), 1, decode.SIDE, decode.SIDE), np.uint8)
    headers = []
    for i, image in enumerate(images):
        try:
            if image.kind == "raw":
                batch[i, 0] = decode.decode_raw(image.data)
            elif image.kind == "encoded":
                headers.append((i, decode.open_header(image.data, limits.max_image_pixels)))
            else:
                raise DecodeError("no image data: set `encoded` or `raw`")
        except DecodeError as e:
            raise InvalidImage(i, str(e)) from None
    total = sum(h.size[0] * h.size[1] for _, h in headers)
    if total > limits.max_request_pixels:
        raise InvalidRequest(f"the request's images add up to {total:,} pixels, over the limit "
                             f"of {limits.max_request_pixels:,} per request; send fewer or "
                             "smaller images")
    for i, header in headers:
        if stop is not None and stop.is_set():
            raise Cancelled(f"the caller cancelled the request while image {i} was decoded")
        _check_deadline(deadline, f"while decoding image {i}")
        wait = _BUDGET_WAIT if deadline is None else deadline - time.monotonic()
        with pixels.reserve(header.size[0] * header.size[1], wait):
            try:
                batch[i, 0] = decode.decode_opened(header, inversion)
            except DecodeError as e:
                raise InvalidImage(i, str(e)) from None
    return batch
