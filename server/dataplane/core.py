"""The protocol-neutral dataplane: admission, limits, deadlines, draining, decoding, batching, top-k.

Every protocol (fmnist.v1, KServe v2, HTTP) calls this and nothing below it: requests arrive as
plain values (server/dataplane/types.py), results leave as dataclasses, problems leave as
`server.errors` exceptions that carry their status code. It never imports grpc. `classify` and
`infer` are coroutines: a request waiting for its decode or its batch holds no thread.

    core = Core(load_models(...), Limits())
    core.start()                                   # warm up the batchers, start their threads
    result = await core.classify("lenet_bn", 0, [ImageData("encoded", png_bytes)], top_k=3)
    result.classifications[0][0].label             # 'Ankle boot'

Where the work happens: validation and raw images on the event loop (raw pixels are used as the
request's bytes, uncopied); encoded images in a pool of decode threads (sized to the cores), under
a server-wide budget of pixels being decoded; the model in each version's batcher thread
(server/batching/), which hands a batch's results back to the loop in one call. A caller that
goes away (its task is cancelled) stops its decode between images and leaves the batch queue
before it runs. Every request is observed once as it ends, however it ends (`observer`:
server/metrics.py). The per-request path is kept short because for a small model it is the cost of
a request (`make profile-serve` shows where it goes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from model_contract import INPUT, SIDE
from server.batching.batcher import BatchEvent, Batcher, BatchPolicy, BatchStats
from server.dataplane import decode
from server.dataplane.budget import PixelBudget
from server.dataplane.decoding import check_deadline, decode_request, raw_batch
from server.dataplane.tensors import Output, TensorAnswer, TensorRequest, answer_tensors
from server.dataplane.types import (MAX_MODEL_NAME_BYTES, MAX_TOP_K, Batching, ClassifyResult,
                                    ImageData, Limits, ModelView, Prediction, RequestEvent,
                                    top_k)
from server.errors import (InvalidRequest, ModelNotFound, Overloaded, ServingError, Unavailable,
                           shorten)
from server.models.loading import LoadedModel
from server.models.runner import RunOutput
from server.models.spec import ModelSpec, Refusal

log = logging.getLogger(__name__)

Images = Union[Sequence[ImageData], np.ndarray]
# `infer` also takes a function that makes the images, called once the model is found: a protocol
# whose tensors are checked only then answers an unknown model first, and every error is counted.
ImagesOrParser = Union[Images, Callable[[], Images]]
BatchObserver = Callable[[str, int, BatchEvent], None]  # (model, version, event): batcher thread


@dataclass
class _Version:
    """One served version: its model, the batcher that runs it, and the requests that chose it
    (what `remove` waits for). The dicts holding these are replaced whole, never edited."""

    model: LoadedModel
    batcher: Batcher
    view: ModelView
    in_use: int = 0


class _Observed:
    """Times one request and hands its RequestEvent to `observer` as it ends: with "OK", its
    ServingError's code, CANCELLED (the caller went away) or INTERNAL (a bug)."""

    __slots__ = ("observer", "event", "started")

    def __init__(self, observer: Callable[[RequestEvent], None] | None, protocol: str,
                 images: ImagesOrParser):
        self.observer = observer
        self.event = RequestEvent(protocol, 0 if callable(images) else _count(images))

    def __enter__(self) -> RequestEvent:
        self.started = time.perf_counter()
        return self.event

    def __exit__(self, kind, error, traceback) -> None:
        event = self.event
        if kind is not None:
            event.code = (error.code if isinstance(error, ServingError) else
                          "CANCELLED" if isinstance(error, asyncio.CancelledError) else "INTERNAL")
        event.seconds = time.perf_counter() - self.started
        if self.observer is not None:
            try:
                self.observer(event)
            except Exception:  # noqa: BLE001 - a broken observer must not fail requests
                log.exception("request observer failed")


class Core:
    def __init__(self, models: list[LoadedModel], limits: Limits = Limits(),
                 batching: Batching = Batching(), refused: Sequence[Refusal] = (),
                 observer: Callable[[RequestEvent], None] | None = None):
        self.limits = limits
        self.refused = list(refused)  # found but not served: ListModels reports them
        self.observer = observer
        self.batching = batching
        self.on_change: list[Callable[[], None]] = []  # called after a version comes or goes
        self.batch_observers: list[BatchObserver] = []  # called for every batch of every version
        self._served: dict[str, dict[int, _Version]] = {}  # copy on write: readers take no lock
        for m in models:
            self._served.setdefault(m.spec.name, {})[m.spec.version] = self._new_version(m)
        self._decoders = ThreadPoolExecutor(limits.decode_threads or os.cpu_count() or 1,
                                            thread_name_prefix="decode")
        self._pixels = PixelBudget(limits.max_decoding_pixels)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._draining = False

    # --- serving versions -------------------------------------------------------------------

    def start(self) -> None:
        """Warm every batcher's batch shapes (before the server reports SERVING), start them."""
        for served in self._all():
            self._start(served.batcher)

    def add(self, loaded: LoadedModel) -> None:
        """Serve one more version (loaded and verified by the caller): its batcher warms up
        first, then requests are routed to it (as the newest when it is)."""
        served = self._new_version(loaded)
        self._start(served.batcher)
        name, version = loaded.spec.name, loaded.spec.version
        with self._lock:
            models = {n: dict(versions) for n, versions in self._served.items()}
            models.setdefault(name, {})[version] = served
            self._served = models
        self._changed()

    def remove(self, model: str, version: int, timeout: float = 60.0) -> None:
        """Stop routing to a version, let the requests that chose it finish (at most `timeout`
        seconds), then close its batcher and session."""
        with self._lock:
            models = {n: dict(versions) for n, versions in self._served.items()}
            served = models.get(model, {}).pop(version, None)
            if served is None:
                return
            if not models[model]:
                del models[model]
            self._served = models
        self._changed()
        give_up = time.monotonic() + timeout
        while served.in_use and time.monotonic() < give_up:
            time.sleep(0.01)
        served.batcher.close()
        served.model.runner.close()

    def versions(self, model: str) -> list[int]:
        """The versions of `model` being served, oldest first."""
        return sorted(self._served.get(model, {}))

    def list_models(self) -> list[ModelView]:
        return [served.view for served in self._all()]

    def lookup(self, model: str, version: int) -> ModelView:
        """The served `model` at `version` (0: its newest); ModelNotFound names what is served."""
        return self._find(model, version).view

    def stats(self, model: str, version: int) -> BatchStats:
        """The cumulative batch figures of one served version (v2 ModelStatistics)."""
        return self._find(model, version).batcher.stats

    def config(self, model: str, version: int) -> tuple[ModelView, BatchPolicy]:
        """One served version and the batching policy it runs with (v2 ModelConfig)."""
        served = self._find(model, version)
        return served.view, served.batcher.policy

    def queues(self) -> list[tuple[ModelView, int]]:
        """Each served version with the images waiting in its batch queue now."""
        return [(served.view, served.batcher.queued_images) for served in self._all()]

    # --- requests ---------------------------------------------------------------------------

    async def classify(self, model: str, version: int, images: Sequence[ImageData],
                       top_k: int = 1, inversion: str = "auto",
                       deadline: float | None = None,
                       protocol: str = "fmnist.v1") -> ClassifyResult:
        """`deadline`: the caller's, in time.monotonic() seconds (None: no deadline).
        `protocol` names the API the request came in by, for the observer."""
        with _Observed(self.observer, protocol, images) as event:
            k = self._check_top_k(top_k)
            spec, out = await self._answer(event, model, version, images, inversion, deadline)
            return ClassifyResult(spec.name, spec.version, _predictions(spec.labels,
                                                                        out.probabilities, k))

    async def infer(self, model: str, version: int, images: ImagesOrParser,
                    inversion: str = "auto", deadline: float | None = None,
                    protocol: str = "fmnist.v1") -> tuple[ModelSpec, RunOutput]:
        """Both outputs for `images`: encoded/raw images (decoded as `classify` does) or the
        model's own tensor, uint8 [n, 1, 28, 28] (the KServe v2 path), or a function making
        either. Returns the spec of the version that answered with its RunOutput."""
        with _Observed(self.observer, protocol, images) as event:
            return await self._answer(event, model, version, images, inversion, deadline)

    async def infer_tensors(self, request: TensorRequest) -> TensorAnswer:
        """KServe v2 inference in tensors (server/dataplane/tensors.py): the request's input and
        outputs are read once its model is found, run as `infer` runs images, and answered
        with the outputs it asked for."""
        outputs: list[Output] = []

        def parse() -> Images:
            images, wanted = request.parse()
            outputs.extend(wanted)
            return images

        spec, out = await self.infer(request.model, request.version, parse,
                                     deadline=request.deadline, protocol=request.protocol)
        return TensorAnswer(spec.name, spec.version, request.id,
                            answer_tensors(spec, out, outputs))

    def drain(self) -> None:
        """From now on, new requests get UNAVAILABLE; requests in flight go on.

        Under the slot lock, so that once this returns `in_flight` counts every request that
        will ever run: none can slip in between a check and the count."""
        with self._lock:
            self._draining = True

    def close(self) -> None:
        for served in self._all():
            served.batcher.close()
        self._decoders.shutdown(wait=True, cancel_futures=True)
        for served in self._all():
            served.model.runner.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def draining(self) -> bool:
        """True once `drain` was called: the server is shutting down (v2 ServerReady says so)."""
        return self._draining

    def served(self) -> str:
        """The served models and versions, for error messages."""
        if not self._served:
            return "none (the server has no models)"
        return ", ".join(f"{name} (versions {', '.join(map(str, sorted(v)))})"
                         for name, v in sorted(self._served.items()))

    # --- steps ------------------------------------------------------------------------------

    async def _answer(self, event: RequestEvent, model: str, version: int,
                      images: ImagesOrParser, inversion: str,
                      deadline: float | None) -> tuple[ModelSpec, RunOutput]:
        """`infer` without the observing; notes in `event` the version and the decode time."""
        if inversion not in decode.INVERSIONS:
            raise InvalidRequest(f"inversion must be one of {', '.join(decode.INVERSIONS)}, "
                                 f"got {shorten(inversion)}")
        if not callable(images):
            self._check_images(images)
        served = self._acquire(model, version)
        try:
            spec = served.model.spec
            event.model, event.version = spec.name, spec.version
            if callable(images):
                images = images()
                event.images = _count(images)
                self._check_images(images)
            check_deadline(deadline, "before decoding")
            if isinstance(images, np.ndarray):
                batch = np.ascontiguousarray(images)
            else:
                started = time.perf_counter()
                try:
                    batch = await self._decode(images, inversion, deadline)
                finally:
                    event.decode_seconds = time.perf_counter() - started
            out = await self._infer(served, batch, deadline)
        finally:
            self._release(served)
        return spec, out

    def _check_images(self, images: Images) -> None:
        if isinstance(images, np.ndarray) and (
                images.dtype != np.uint8 or images.shape[1:] != (1, SIDE, SIDE)):
            raise InvalidRequest(f"input {INPUT!r}: the models take uint8 of shape [N, 1, {SIDE}, "
                                 f"{SIDE}] with N >= 1, got {images.dtype} of shape "
                                 f"{list(images.shape)}")
        self.check_image_count(len(images))

    def check_image_count(self, n: int) -> None:
        """A request's image count, judged before a protocol converts its images one by one."""
        if n == 0:
            raise InvalidRequest("no images in the request")
        if n > self.limits.max_images_per_request:
            raise InvalidRequest(f"{n:,} images is over the limit of "
                                 f"{self.limits.max_images_per_request} per request; split them")

    def _find(self, model: str, version: int) -> _Version:
        versions = self._served.get(model)
        if versions is None:
            if not model:
                raise InvalidRequest(f"model is required; served models: {self.served()}")
            if len(model.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
                raise InvalidRequest(f"model name {shorten(model)} is over {MAX_MODEL_NAME_BYTES}"
                                     " bytes")
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

    def _acquire(self, model: str, version: int) -> _Version:
        """Count this request as in flight on the version it resolves to, or refuse it when
        draining or at the limit; `_release` undoes it. Resolving and counting under one lock
        is what lets `remove` wait for exactly the requests that chose the version it takes
        away."""
        with self._lock:
            if self._draining:
                raise Unavailable("the server is shutting down; retry on another instance")
            if self._in_flight >= self.limits.max_in_flight:
                raise Overloaded(f"the server is at its limit of {self.limits.max_in_flight} "
                                 "requests in flight; retry later", retry_after=0.05)
            served = self._find(model, version)
            self._in_flight += 1
            served.in_use += 1
        return served

    def _release(self, served: _Version) -> None:
        with self._lock:
            self._in_flight -= 1
            served.in_use -= 1

    async def _decode(self, images: Sequence[ImageData], inversion: str,
                      deadline: float | None) -> np.ndarray:
        """Raw images on the loop (their bytes as they are); anything encoded in the decode
        pool."""
        batch = raw_batch(images)
        if batch is not None:
            return batch
        if all(image.kind == "raw" for image in images):  # one is malformed: name it
            return decode_request(images, inversion, self.limits, self._pixels, deadline)
        stop = threading.Event()
        try:  # no local for the future: it holds the error, whose traceback holds this frame
            return await asyncio.get_running_loop().run_in_executor(
                self._decoders, decode_request, images, inversion, self.limits, self._pixels,
                deadline, stop)
        except asyncio.CancelledError:
            stop.set()  # the decode stops before its next image
            raise

    async def _infer(self, served: _Version, batch: np.ndarray,
                     deadline: float | None) -> RunOutput:
        ticket = served.batcher.submit(batch, deadline, asyncio.get_running_loop())
        try:
            out = await ticket.future
        except asyncio.CancelledError:
            ticket.cancel()  # leaves the queue if it has not run yet
            raise
        except BaseException:
            del ticket  # its future holds the error, whose traceback holds this frame: a cycle
            raise
        return out  # of the shape the batcher checked

    def _new_version(self, loaded: LoadedModel) -> _Version:
        spec = loaded.spec
        batcher = Batcher(loaded.runner, self.batching.policy(spec.name),
                          f"{spec.name} v{spec.version}")
        batcher.listeners.append(lambda event: self._on_batch(spec.name, spec.version, event))
        return _Version(loaded, batcher, ModelView(spec, loaded.provider))

    def _on_batch(self, model: str, version: int, event: BatchEvent) -> None:
        for observe in self.batch_observers:
            observe(model, version, event)

    @staticmethod
    def _start(batcher: Batcher) -> None:
        started = time.perf_counter()
        batcher.start()
        log.info("batcher %s: max_batch=%d max_delay=%.1fms queue=%d images, warmed %s in "
                 "%.2fs", batcher.name, batcher.policy.max_batch,
                 batcher.policy.max_delay * 1000, batcher.policy.max_queue_images,
                 "padded buckets" if batcher.pad else "batch shapes",
                 time.perf_counter() - started)

    def _all(self) -> list[_Version]:
        return [served for versions in self._served.values() for served in versions.values()]

    def _changed(self) -> None:
        for hook in self.on_change:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a broken hook must not stop a model swap
                log.exception("model change hook failed")


def _count(images: Images) -> int:
    """The images in a request; 0 for a scalar tensor (refused later as holding none)."""
    return 0 if isinstance(images, np.ndarray) and images.ndim == 0 else len(images)


def _predictions(labels: Sequence[str], probabilities: np.ndarray,
                 k: int) -> list[list[Prediction]]:
    """Python ints and floats (one tolist each, not a numpy scalar per value)."""
    return [[Prediction(c, labels[c], row[c]) for c in order]
            for row, order in zip(probabilities.tolist(), top_k(probabilities, k).tolist())]
