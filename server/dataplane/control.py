"""What changes the served set at run time: live reload from the models folder, and load and unload
on request (KServe v2 RepositoryModelLoad/Unload, on both protocols).

    control = ModelControl(repository, served)
    control.start(poll_seconds=5)          # a thread polls the folder
    control.load("resnet18"); control.unload("lenet")

The repository (server/models/repository.py) looks at the folder and hands back what to add and
remove; this applies it to `Served`, one change at a time (a poll, a load, an unload never
overlap), and logs what it did. A model unloaded on request stays unloaded, whatever polling
finds, until it is loaded on request. Models pinned with --model-version are left as they are.
"""

from __future__ import annotations

import logging
import threading

from server.dataplane.served import Served
from server.errors import ModelNotFound
from server.models.repository import Changes, Repository

log = logging.getLogger(__name__)


class ModelControl:
    def __init__(self, repository: Repository, served: Served):
        self.repository = repository
        self.served = served
        self.models_dir = repository.models_dir
        self._unloaded: set[str] = set()  # unloaded on request: polling leaves them alone
        self._lock = threading.Lock()  # one poll or on-demand change at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, poll_seconds: float) -> None:
        if self._thread is not None:
            return
        if poll_seconds <= 0:
            log.info("not watching %s (--poll-seconds 0): new versions are served after a "
                     "restart or a v2 RepositoryModelLoad", self.models_dir)
            return
        log.info("watching %s every %gs for new and removed versions (--keep-versions %d)",
                 self.models_dir, poll_seconds, self.repository.keep_versions)
        self._thread = threading.Thread(target=self._run, args=(poll_seconds,),
                                        name="repository", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def poll(self) -> None:
        """Bring the served versions in line with the folder, once."""
        with self._lock:
            self._apply(self.repository.poll(self.served.by_name(), self._unloaded))

    def load(self, name: str) -> None:
        """Load (or reload) the newest loadable version of `name` now (RepositoryModelLoad);
        ModelNotFound, or ModelLoadFailed when its newest version could not be served."""
        with self._lock:
            self._unloaded.discard(name)
            changes = self.repository.load(name, self.served.by_name())
            self._apply(changes)
        if changes.error is not None:
            raise changes.error

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` (drained first) until it is loaded again."""
        with self._lock:
            versions = self.served.versions(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._unloaded.add(name)
            for version in versions:
                self.served.remove(name, version)
            log.info("unloaded %s (versions %s) on request", name, versions)

    def _apply(self, changes: Changes) -> None:
        """Add first, then remove: a model is never left without a version."""
        for model in changes.add:
            self.served.add(model)
            log.info("now serving %s v%d (%s)", model.spec.name, model.spec.version,
                     model.provider)
        for name, version, why in changes.remove:
            self.served.remove(name, version)
            log.info("unloaded %s v%d (%s)", name, version, why)
        if changes.refused is not None:
            self.served.refuse(changes.refused)

    def _run(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - polling must go on; the next poll may succeed
                log.exception("polling %s failed", self.models_dir)
