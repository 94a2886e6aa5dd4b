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
from server.dataplane.types import IndexEntry
from server.errors import ModelNotFound
from server.models.repository import Changes, Repository

log = logging.getLogger(__name__)


class ModelControl:
    def __init__(self, repository: Repository, served: Served,
                 unready_while_loading: bool = False):
        """`unready_while_loading`: report not ready while a new version loads (behind a
        balancer, the others take the traffic meanwhile; --unready-while-loading)."""
        self.repository = repository
        self.served = served
        self.unready_while_loading = unready_while_loading
        self.loading: str | None = None  # the version being loaded by a poll, when told
        self.models_dir = repository.models_dir
        self._unloaded: dict[str, tuple[list[int], str]] = {}  # name -> (versions, who): polling
        # leaves them alone, the index lists them
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
            try:
                self._apply(self.repository.poll(self.served.by_name(), set(self._unloaded),
                                                 self._on_loading))
            finally:
                if self.loading is not None:
                    self.loading = None
                    self.served.notify()

    def _on_loading(self, name: str, version: int) -> None:
        if self.unready_while_loading:
            self.loading = f"{name} v{version}"
            self.served.notify()

    def load(self, name: str) -> None:
        """Load (or reload) the newest loadable version of `name` now (RepositoryModelLoad);
        ModelNotFound, or ModelLoadFailed when its newest version could not be served."""
        with self._lock:
            self._unloaded.pop(name, None)
            changes = self.repository.load(name, self.served.by_name())
            self._apply(changes)
        if changes.error is not None:
            raise changes.error

    def unload(self, name: str, caller: str = "") -> None:
        """Stop serving every version of `name` (drained first) until it is loaded again."""
        with self._lock:
            versions = self.served.versions(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._unloaded[name] = (versions, caller)
            for version in versions:
                self.served.remove(name, version)
            log.info("unloaded %s (versions %s) on request%s", name, versions,
                     f" by {caller}" if caller else "")

    def unloaded(self) -> list[IndexEntry]:
        """The versions unloaded on request, as the index lists them."""
        return [IndexEntry(name, version, "UNAVAILABLE",
                           "unloaded on request" + (f" by {who}" if who else ""))
                for name, (versions, who) in sorted(self._unloaded.items()) for version in versions]

    @property
    def folder_ok(self) -> bool:
        return self.repository.folder_ok

    def file_problems(self) -> dict[tuple[str, int], str]:
        return self.repository.file_problems()

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
