"""The protocol-neutral dataplane: every operation the protocols offer is a call here.

fmnist.v1 and KServe v2 over gRPC (server/api/grpc/) and HTTP (server/api/http/) are sibling
adapters: each turns its wire format into these calls and their values (server/dataplane/types.py,
tensors.py, views.py) and back, and nothing else. Problems leave as `server.errors` exceptions that
carry their status code. It never imports grpc. Requests are coroutines: one waiting for its decode
or its batch holds no thread.

    core = Core(models, Limits())
    core.start()                                   # warm up the batchers, start their threads
    result = await core.classify("lenet_bn", 0, [ImageData("encoded", png_bytes)], top_k=3)
    result.classifications[0][0].label             # 'Ankle boot'

What it is made of: `Admission` (server/admission.py: every refusal, in order), `Served`
(served.py: the served and refused versions, one owner), `ModelControl` (control.py: live reload,
load and unload, when there is a models folder), the views (views.py), and a pool of decode
threads. Where the work happens: validation and raw images on the event loop (raw pixels are used
as the request's bytes, uncopied); encoded images in the decode pool, under the server-wide pixel
budget; the model in each version's batcher thread (server/batching/), which hands a batch's
results back to the loop in one call. A caller that goes away (its task is cancelled) stops its
decode between images and leaves the batch queue before it runs. Every request is observed once
as it ends, however it ends (`observer`: server/metrics/registry.py). The per-request path is
kept short because for a small model it is the cost of a request (`make profile-serve`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, Union

import numpy as np

from model_contract import INPUT, SIDE
from server.admission import Admission, Limits, check_deadline
from server.dataplane.access import Access
from server.dataplane import imagefile, tracing, views
from server.dataplane.control import ModelControl
from server.dataplane.request_images import decode_request, raw_batch
from server.dataplane.saturation import Saturation
from server.dataplane.served import Served, Version
from server.dataplane.tensors import Output, TensorAnswer, TensorRequest, answer_tensors
from server.dataplane.types import (MAX_TOP_K, Batching, ClassifyResult, ImageData, IndexEntry,
                                    ModelView, Prediction, RequestEvent, top_k)
from server.errors import InvalidRequest, ServingError, Unimplemented, shorten
from server.models.loading import LoadedModel
from server.models.repository import Repository
from server.models.runner import RunOutput
from server.models.spec import Refusal

log = logging.getLogger(__name__)

Images = Union[Sequence[ImageData], np.ndarray]
# `infer` also takes a function that makes the images, called once the model is found: a protocol
# whose tensors are checked only then answers an unknown model first, and every error is counted.
ImagesOrParser = Union[Images, Callable[[], Images]]
EXTENSIONS = ("classification", "model_configuration", "statistics")  # KServe v2 / Triton's


class _Observed:
    """Times one request and hands its RequestEvent to `observer` as it ends: with "OK", its
    ServingError's code, CANCELLED (the caller went away) or INTERNAL (a bug). With tracing on,
    its request span runs alongside (`event.trace`)."""

    __slots__ = ("observer", "event", "started", "tracer", "operation")

    def __init__(self, core: "Core", protocol: str, images: ImagesOrParser, operation: str):
        self.observer = core.observer
        self.tracer = core.tracer
        self.operation = operation
        self.event = RequestEvent(protocol, 0 if callable(images) else _count(images))

    def __enter__(self) -> RequestEvent:
        self.started = time.perf_counter()
        if self.tracer is not None:
            self.event.trace = self.tracer.request(self.operation, self.event.protocol)
        return self.event

    def __exit__(self, kind, error, traceback) -> None:
        event = self.event
        if kind is not None:
            event.code = (error.code if isinstance(error, ServingError) else
                          "CANCELLED" if isinstance(error, asyncio.CancelledError) else "INTERNAL")
        event.seconds = time.perf_counter() - self.started
        if event.trace is not None:
            event.trace.end(event, error)
        if self.observer is not None:
            try:
                self.observer(event)
            except Exception:  # noqa: BLE001 - a broken observer must not fail requests
                log.exception("request observer failed")


class Core:
    def __init__(self, models: list[LoadedModel], limits: Limits = Limits(),
                 batching: Batching = Batching(), refused: Sequence[Refusal] = (), *,
                 observer: Callable[[RequestEvent], None] | None = None,
                 repository: Repository | None = None,
                 server: tuple[str, str] = ("fmnist-serve", ""), access: Access | None = None,
                 unready_while_loading: bool = False, tracer=None):
        """`repository`: the models folder this server follows (None: it was given its models,
        and load/unload are UNIMPLEMENTED). `server`: its name and version, for ServerMetadata.
        `access`: who may call what (default: everyone, but not the repository API). `tracer`:
        tracing.start's (None: tracing is off)."""
        self.limits = limits
        self.observer = observer
        self.tracer = tracer
        self.access = access or Access()
        self.admission = Admission(limits)
        self.served = Served(batching, refused)
        self.control = (None if repository is None else
                        ModelControl(repository, self.served, unready_while_loading))
        self._saturation = Saturation(self.served)
        if tracer is not None:
            self.served.batch_observers.append(tracer.on_batch)
        self._models = list(models)
        self._server = server
        self._started = False  # serving on its ports (`open`)
        self._gate = True  # --workers: the parent's word that every worker serves
        self._decoders = ThreadPoolExecutor(limits.decode_threads or os.cpu_count() or 1,
                                            thread_name_prefix="decode")

    def start(self) -> None:
        """Warm every batcher's batch shapes (before the server reports SERVING), start them
        and the saturation's sampling."""
        self.served.start(self._models)
        self._models = []
        self._saturation.start()

    # --- requests ---------------------------------------------------------------------------

    async def classify(self, model: str, version: int, images: Sequence[ImageData],
                       top_k: int = 1, inversion: str = "auto",
                       deadline: float | None = None,
                       protocol: str = "fmnist.v1") -> ClassifyResult:
        """`deadline`: the caller's, in time.monotonic() seconds (None: no deadline).
        `protocol` names the API the request came in by, for the observer."""
        with _Observed(self, protocol, images, "classify") as event:
            k = _check_top_k(top_k)
            view, out = await self._answer(event, model, version, images, inversion, deadline)
            return ClassifyResult(view.name, view.version,
                                  _predictions(view.labels, out.probabilities, k))

    async def infer(self, model: str, version: int, images: ImagesOrParser,
                    inversion: str = "auto", deadline: float | None = None,
                    protocol: str = "fmnist.v1") -> tuple[ModelView, RunOutput]:
        """Both outputs for `images`: encoded/raw images (decoded as `classify` does) or the
        model's own tensor, uint8 [n, 1, 28, 28], or a function making either. Returns the
        version that answered with its RunOutput."""
        with _Observed(self, protocol, images, "infer") as event:
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

        view, out = await self.infer(request.model, request.version, parse,
                                     deadline=request.deadline, protocol=request.protocol)
        return TensorAnswer(view.name, view.version, request.id,
                            answer_tensors(view.labels, out, outputs))

    def check_image_count(self, n: int) -> None:
        """A request's image count, judged before a protocol converts its images one by one."""
        self.admission.check_image_count(n)

    # --- what is served -----------------------------------------------------------------------

    def list_models(self) -> list[ModelView]:
        return self.served.views()

    def refused(self) -> list[IndexEntry]:
        """The versions found but not served, with why: refused, or unloaded on request."""
        unloaded = self.control.unloaded() if self.control else []
        return self.served.refused() + unloaded

    def lookup(self, model: str, version: int) -> ModelView:
        """The served `model` at `version` (0: its newest); ModelNotFound names what is served."""
        return self.served.find(model, version).view

    def server_info(self) -> views.ServerInfo:
        extensions = EXTENSIONS + (("model_repository",) if self.control else ())
        return views.ServerInfo(*self._server, extensions)

    def model_metadata(self, model: str, version: int) -> views.ModelMetadata:
        return views.metadata(self.lookup(model, version), self.served.versions(model))

    def model_config(self, model: str, version: int) -> views.ModelConfig:
        served = self.served.find(model, version)
        return views.config(served.view, served.batcher.policy)

    def statistics(self, model: str, version: int | None) -> list[views.VersionStatistics]:
        """Every served version's (model ""), one model's (version None: each served one), or
        one version's cumulative figures."""
        if not model:
            if version is not None:
                raise InvalidRequest("a version needs a model name; send neither for every model")
            chosen = sorted(self.served.all(), key=lambda v: (v.view.name, v.view.version))
        elif version is None:
            self.served.find(model, 0)
            chosen = [self.served.find(model, v) for v in self.served.versions(model)]
        else:
            chosen = [self.served.find(model, version)]
        return [views.statistics(v.view.name, v.view.version, v.batcher.stats) for v in chosen]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every served version READY and, unless `ready_only`, every refused one UNAVAILABLE
        with its reason."""
        entries = [IndexEntry(m.name, m.version, "READY") for m in self.list_models()]
        if not ready_only:
            entries += self.refused()
        return sorted(entries, key=lambda e: (e.name, e.version, e.state))

    def queues(self) -> list[tuple[ModelView, int]]:
        """Each served version with the images waiting in its batch queue now."""
        return [(v.view, v.batcher.queued_images) for v in self.served.all()]

    def saturation(self) -> tuple[float, list[tuple[ModelView, float]]]:
        """The server's saturation and each served version's (server/dataplane/saturation.py:
        how long new work waits now, in batches; 1.0: as long as a full batch takes)."""
        return self._saturation.read()

    async def load(self, model: str, parameters: Sequence[str] = (), token: bytes | None = None,
                   peer: str = "") -> None:
        """RepositoryModelLoad, for a caller with the admin role (`token`; `peer`: its address,
        for the audit line); on a worker thread, as loading and warming take seconds."""
        control, _ = self._control("load", parameters, token, peer)
        await asyncio.to_thread(control.load, model)

    async def unload(self, model: str, parameters: Sequence[str] = (),
                     token: bytes | None = None, peer: str = "") -> None:
        """RepositoryModelUnload, as `load`; draining the versions may take seconds."""
        control, caller = self._control("unload", parameters, token, peer)
        await asyncio.to_thread(control.unload, model, caller)

    # --- readiness: one truth for every protocol ------------------------------------------

    def open(self) -> None:
        """The ports serve: from now on the server may be ready."""
        self._started = True

    def set_gate(self, open_: bool) -> None:
        """--workers: ready only while the parent says every worker serves."""
        self._gate = open_

    def not_ready(self, gate: bool = True) -> str | None:
        """Why the server is not ready now (None: it is). What gRPC health, KServe ServerReady
        on both protocols, /v2/health/ready and the page all answer from. `gate`: False to
        leave the --workers gate out (a worker's own view, for its parent)."""
        if not self._started:
            return "starting"
        if self.draining:
            return "the server is shutting down"
        if not self.served.all():
            return f"no model is served; {self.served.describe()}"
        if gate and not self._gate:
            return "a worker of this server is not serving (--workers); retry shortly"
        if self.control is not None and self.control.loading:
            return f"loading {self.control.loading} (--unready-while-loading)"
        return None

    def ready(self) -> bool:
        return self.not_ready() is None

    def model_ready(self, model: str, version: int = 0) -> bool:
        """Whether requests for `model` at `version` (0: its newest) would be served now."""
        if not self._started or self.draining:
            return False
        try:
            self.served.find(model, version)
        except ServingError:
            return False
        return True

    # --- lifecycle ----------------------------------------------------------------------------

    def drain(self) -> None:
        """From now on, new requests get UNAVAILABLE; requests in flight go on."""
        self.admission.drain()

    def close(self) -> None:
        self._saturation.stop()
        self._decoders.shutdown(wait=True, cancel_futures=True)
        self.served.close()

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    @property
    def draining(self) -> bool:
        """True once `drain` was called: the server is shutting down (v2 ServerReady says so)."""
        return self.admission.draining

    # --- steps ------------------------------------------------------------------------------

    async def _answer(self, event: RequestEvent, model: str, version: int,
                      images: ImagesOrParser, inversion: str,
                      deadline: float | None) -> tuple[ModelView, RunOutput]:
        """`infer` without the observing; notes in `event` the version and the decode time."""
        if inversion not in imagefile.INVERSIONS:
            raise InvalidRequest(f"inversion must be one of {', '.join(imagefile.INVERSIONS)}, "
                                 f"got {shorten(inversion)}")
        if not callable(images):
            self._check_images(images)
        with self.admission.entered(), self.served.using(model, version) as served:
            view = served.view
            event.model, event.version = view.name, view.version
            if callable(images):
                with tracing.child(event.trace, "input"):
                    images = images()
                event.images = _count(images)
                self._check_images(images)
            check_deadline(deadline, "before decoding")
            if isinstance(images, np.ndarray):
                batch = np.ascontiguousarray(images)
            else:
                started = time.perf_counter()
                try:
                    with tracing.child(event.trace, "decode"):
                        batch = await self._decode(images, inversion, deadline)
                finally:
                    event.decode_seconds = time.perf_counter() - started
            out = await _infer(served, batch, deadline, event.trace)
        return view, out

    def _check_images(self, images: Images) -> None:
        if isinstance(images, np.ndarray) and (
                images.dtype != np.uint8 or images.shape[1:] != (1, SIDE, SIDE)):
            raise InvalidRequest(f"input {INPUT!r}: the models take uint8 of shape [N, 1, {SIDE}, "
                                 f"{SIDE}] with N >= 1, got {images.dtype} of shape "
                                 f"{list(images.shape)}")
        self.admission.check_image_count(len(images))

    async def _decode(self, images: Sequence[ImageData], inversion: str,
                      deadline: float | None) -> np.ndarray:
        """Raw images on the loop (their bytes as they are); anything encoded in the decode
        pool."""
        batch = raw_batch(images)
        if batch is not None:
            return batch
        pixels, limits = self.admission.pixels, self.limits
        if all(image.kind == "raw" for image in images):  # one is malformed: name it
            return decode_request(images, inversion, limits, pixels, deadline)
        stop = threading.Event()
        try:  # no local for the future: it holds the error, whose traceback holds this frame
            return await asyncio.get_running_loop().run_in_executor(
                self._decoders, decode_request, images, inversion, limits, pixels, deadline,
                stop)
        except asyncio.CancelledError:
            stop.set()  # the decode stops before its next image
            raise

    def _control(self, action: str, parameters: Sequence[str], token: bytes | None,
                 peer: str) -> tuple[ModelControl, str]:
        """The control, for a caller with the role, when there is one and the request's
        parameters are ones it takes (the names: tritonclient always sends unload_dependents,
        and no model here has any). Logs who asked."""
        operation = f"/inference.GRPCInferenceService/RepositoryModel{action.capitalize()}"
        caller = f"{self.access.check(operation, token)} from {peer or '?'}"
        log.info("%s requested by %s", action, caller, extra={"caller": caller})
        if self.control is None:
            raise Unimplemented(f"Repository{action.capitalize()} is not available: this server "
                                f"has no model repository to {action} from")
        unsupported = sorted(set(parameters) - {"unload_dependents"})
        if unsupported:
            raise InvalidRequest(f"parameters are not supported by {action}: "
                                 f"{', '.join(map(shorten, unsupported[:5]))}")
        return self.control, caller


async def _infer(served: Version, batch: np.ndarray, deadline: float | None,
                 trace) -> RunOutput:
    """`trace`: the request's (tracing on): its tag goes with the images, so that each batch
    that runs some of them is linked to it."""
    ticket = served.batcher.submit(batch, deadline, asyncio.get_running_loop(),
                                   None if trace is None else trace.tag)
    try:
        out = await ticket.future
    except asyncio.CancelledError:
        ticket.cancel()  # leaves the queue if it has not run yet
        raise
    except BaseException:
        del ticket  # its future holds the error, whose traceback holds this frame: a cycle
        raise
    return out  # of the shape the batcher checked


def _check_top_k(top_k: int) -> int:
    if not 0 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be 0..{MAX_TOP_K} (0 means 1), got {top_k}")
    return top_k or 1


def _count(images: Images) -> int:
    """The images in a request; 0 for a scalar tensor (refused later as holding none)."""
    return 0 if isinstance(images, np.ndarray) and images.ndim == 0 else len(images)


def _predictions(labels: Sequence[str], probabilities: np.ndarray,
                 k: int) -> list[list[Prediction]]:
    """Python ints and floats (one tolist each, not a numpy scalar per value)."""
    return [[Prediction(c, labels[c], row[c]) for c in order]
            for row, order in zip(probabilities.tolist(), top_k(probabilities, k).tolist())]
