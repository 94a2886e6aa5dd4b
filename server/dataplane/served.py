"""What is served: the one owner of the served versions (each with its batcher) and of the versions
found but refused. Everything that changes them goes through here (start-up, live reload, load
and unload on request: server/dataplane/control.py); everything that reads them (requests,
ListModels, health, metrics) reads here.

Readers take no lock: the dicts are replaced whole on a change (copy on write). Picking the
version a request uses and counting it as in use happen under one lock, which is what lets
`remove` wait for exactly the requests that chose the version it takes away.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from server.batching.batcher import BatchEvent, Batcher
from server.dataplane.types import MAX_MODEL_NAME_BYTES, Batching, IndexEntry, ModelView
from server.errors import InvalidRequest, ModelNotFound, shorten
from server.models.loading import LoadedModel
from server.models.spec import Refusal

log = logging.getLogger(__name__)

BatchObserver = Callable[[str, int, BatchEvent], None]  # (model, version, event): batcher thread


@dataclass(eq=False)
class Version:
    """One served version: its model, the batcher that runs it, and the requests that chose it."""

    model: LoadedModel
    batcher: Batcher
    view: ModelView
    in_use: int = 0


class Served:
    def __init__(self, batching: Batching, refused: Sequence[Refusal] = ()):
        self.batching = batching
        self.on_change: list[Callable[[], None]] = []  # called after a version comes or goes
        self.batch_observers: list[BatchObserver] = []  # every batch of every version
        self._versions: dict[str, dict[int, Version]] = {}
        self._refused = list(refused)
        self._lock = threading.Lock()

    # --- changes ------------------------------------------------------------------------------

    def add(self, loaded: LoadedModel) -> None:
        """Serve one more version (loaded and verified by the caller): its batcher warms up
        first, then requests are routed to it (as the newest when it is)."""
        version = self._new_version(loaded)
        _start(version.batcher)
        name, number = loaded.spec.name, loaded.spec.version
        with self._lock:
            models = {n: dict(versions) for n, versions in self._versions.items()}
            models.setdefault(name, {})[number] = version
            self._versions = models
        self._changed()

    def remove(self, model: str, version: int, timeout: float = 60.0) -> None:
        """Stop routing to a version, let the requests that chose it finish (at most `timeout`
        seconds), then close its batcher and session."""
        with self._lock:
            models = {n: dict(versions) for n, versions in self._versions.items()}
            served = models.get(model, {}).pop(version, None)
            if served is None:
                return
            if not models[model]:
                del models[model]
            self._versions = models
        self._changed()
        give_up = time.monotonic() + timeout
        while served.in_use and time.monotonic() < give_up:
            time.sleep(0.01)
        served.batcher.close()
        served.model.runner.close()

    def refuse(self, refused: Sequence[Refusal]) -> None:
        """The versions found but not served, as the repository last saw them."""
        self._refused = list(refused)

    def start(self, models: Sequence[LoadedModel]) -> None:
        """The start-up set: each version's batcher warmed before the server reports SERVING."""
        for loaded in models:
            self.add(loaded)

    def close(self) -> None:
        for version in self.all():
            version.batcher.close()
        for version in self.all():
            version.model.runner.close()

    # --- reading ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, model: str, version: int) -> Iterator[Version]:
        """The served `model` at `version` (0: its newest), counted as in use for the block."""
        with self._lock:
            served = self.find(model, version)
            served.in_use += 1
        try:
            yield served
        finally:
            with self._lock:
                served.in_use -= 1

    def find(self, model: str, version: int) -> Version:
        """ModelNotFound names what is served; a name no model could have is INVALID_ARGUMENT."""
        versions = self._versions.get(model)
        if versions is None:
            if not model:
                raise InvalidRequest(f"model is required; served models: {self.describe()}")
            if len(model.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
                raise InvalidRequest(f"model name {shorten(model)} is over {MAX_MODEL_NAME_BYTES}"
                                     " bytes")
            raise ModelNotFound(f"model {shorten(model)} is not served; served models: "
                                f"{self.describe()}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(f"model {shorten(model)} version {version} is not served; served "
                                f"models: {self.describe()}")
        return versions[version]

    def versions(self, model: str) -> list[int]:
        """The versions of `model` being served, oldest first."""
        return sorted(self._versions.get(model, {}))

    def by_name(self) -> dict[str, list[int]]:
        return {name: sorted(versions) for name, versions in self._versions.items()}

    def views(self) -> list[ModelView]:
        return [version.view for version in self.all()]

    def refused(self) -> list[IndexEntry]:
        return [IndexEntry(r.name, r.version, "UNAVAILABLE", r.reason) for r in self._refused]

    def all(self) -> list[Version]:
        return [served for versions in self._versions.values() for served in versions.values()]

    def describe(self) -> str:
        """The served models and versions, for error messages."""
        if not self._versions:
            return "none (the server has no models)"
        return ", ".join(f"{name} (versions {', '.join(map(str, sorted(v)))})"
                         for name, v in sorted(self._versions.items()))

    # --- steps --------------------------------------------------------------------------------

    def _new_version(self, loaded: LoadedModel) -> Version:
        spec = loaded.spec
        batcher = Batcher(loaded.runner, self.batching.policy(spec.name),
                          f"{spec.name} v{spec.version}")
        batcher.listeners.append(lambda event: self._on_batch(spec.name, spec.version, event))
        return Version(loaded, batcher, ModelView.of(spec, loaded.provider))

    def _on_batch(self, model: str, version: int, event: BatchEvent) -> None:
        for observe in self.batch_observers:
            observe(model, version, event)

    def notify(self) -> None:
        """Run the change hooks: something readiness depends on changed (server/app.py's gRPC
        health follows)."""
        self._changed()

    def _changed(self) -> None:
        for hook in self.on_change:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a broken hook must not stop a model swap
                log.exception("model change hook failed")


def _start(batcher: Batcher) -> None:
    started = time.perf_counter()
    batcher.start()
    log.info("batcher %s: max_batch=%d max_delay=%.1fms queue=%d images, warmed %s in "
             "%.2fs", batcher.name, batcher.policy.max_batch,
             batcher.policy.max_delay * 1000, batcher.policy.max_queue_images,
             "padded buckets" if batcher.pad else "batch 1",
             time.perf_counter() - started)
