"""The live model repository: the models folder is watched, and the served versions follow it.

    repo = Repository("artifacts/models", Loader(ProviderPolicy("auto")), keep_versions=1)
    core = Core(repo.load_all(), limits, batching, repo.refused())
    repo.attach(core)
    repo.start(poll_seconds=5)           # a thread polls the folder
    repo.load("resnet18"); repo.unload("lenet")   # on demand (v2 RepositoryModelLoad/Unload)

Each poll, per model:
- a version folder newer than the newest served appears (the exporter renames a finished folder
  into place, so a folder is whole when it appears): it is loaded, warmed, probe-verified
  (server/models/loading.py) and only then becomes the newest; the older ones beyond
  `keep_versions` are drained and unloaded (`Core.remove` waits for the requests that chose
  them). A request never fails because of a swap;
- a version that fails to load is logged, listed as refused, and not tried again until its file
  changes; what was served keeps serving;
- a served version whose folder is gone is drained and unloaded; one whose folder is there but
  damaged (unreadable, its model file gone or corrupted) keeps serving what was loaded.
Models pinned with --model-version are left as they are; a model unloaded on demand stays
unloaded until it is loaded on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from model_contract import split_name
from server.errors import ModelLoadError, ModelNotFound, ServingError
from server.models.loading import LoadedModel, Loader
from server.models.scan import Found, scan
from server.models.spec import Refusal

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class Repository:
    def __init__(self, models_dir: str | Path, loader: Loader,
                 wanted: dict[str, set[int]] | None = None, keep_versions: int = 1):
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.models_dir = Path(models_dir)
        self.loader = loader
        self.wanted = wanted or {}
        self.keep_versions = keep_versions
        self._core = None
        self._refused: dict[tuple[str, int], Refusal] = {}
        self._failed: dict[tuple[str, int], tuple[int, int]] = {}  # file signature that failed
        self._unloaded: set[str] = set()  # unloaded on demand: polling leaves them alone
        self._unreadable = False  # the models folder could not be read at the last poll
        self._lock = threading.Lock()  # one poll or on-demand change at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_all(self) -> list[LoadedModel]:
        """The start-up load (newest loadable version of each model, or the pinned ones)."""
        refused: list[Refusal] = []
        models = self.loader.load_all(self.models_dir, self.wanted, refused)
        for r in refused:
            self._refuse(r)
        return models

    def refused(self) -> list[Refusal]:
        return sorted(self._refused.values(), key=lambda r: (r.name, r.version))

    def attach(self, core) -> None:
        self._core = core

    def start(self, poll_seconds: float) -> None:
        if self._thread is not None:
            return
        if poll_seconds <= 0:
            log.info("not watching %s (--poll-seconds 0): new versions are served after a "
                     "restart or a v2 RepositoryModelLoad", self.models_dir)
            return
        log.info("watching %s every %gs for new and removed versions (--keep-versions %d)",
                 self.models_dir, poll_seconds, self.keep_versions)
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
            scanned: list[Refusal] = []
            try:
                found = scan(self.models_dir, scanned)
            except OSError as e:  # the whole folder: what is loaded keeps serving
                if not self._unreadable:
                    log.error("cannot read the models folder %s (%s); the %d version(s) loaded "
                              "keep serving", self.models_dir, e.strerror or e,
                              len(self._core.list_models()))
                self._unreadable = True
                return
            self._unreadable = False
            present = _present(found, scanned)
            for r in scanned:
                self._refuse(r)
            for name, versions in sorted(found.items()):
                if name not in self.wanted and name not in self._unloaded:
                    self._update(name, versions, present)
            self._drop_gone(present)
            self._refused = {k: r for k, r in self._refused.items()
                             if _exists(present, *k) and k[1] not in self._core.versions(k[0])}
            self._core.refused = self.refused()
            log.debug("polled %s: %d model(s) on disk, %d version(s) served, %d refused",
                      self.models_dir, len(present), len(self._core.list_models()),
                      len(self._refused))

    def load(self, name: str) -> None:
        """Load (or reload) the newest loadable version of `name` now; ModelLoadFailed (with
        the reason) when the newest version on disk could not be served, so that a rollout
        script learns that its version failed even while an older one keeps serving."""
        with self._lock:
            self._unloaded.discard(name)
            scanned: list[Refusal] = []
            try:
                everything = scan(self.models_dir, scanned)
            except OSError as e:
                raise ModelLoadFailed(f"cannot read the models folder: {e.strerror or e}") from None
            found = everything.get(name, {})
            on_disk = set(found) | {r.version for r in scanned if r.name == name}
            if not on_disk:
                raise ModelNotFound(f"no model {name!r} in the models folder")
            for r in scanned:
                self._refuse(r)
            for version in found:  # an explicit load retries what failed before
                self._failed.pop((name, version), None)
            self._update(name, found, _present(everything, scanned))
            self._core.refused = self.refused()
            served, newest = self._core.versions(name), max(on_disk)
            if newest not in served:
                reason = self._refused.get((name, newest))
                raise ModelLoadFailed(
                    f"model {name!r} v{newest} was not loaded: "
                    f"{reason.reason if reason else 'its folder cannot be read'}; "
                    + (f"v{served[-1]} keeps serving" if served else "no version is served"))

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` (drained first) until it is loaded again."""
        with self._lock:
            versions = self._core.versions(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._unloaded.add(name)
            for version in versions:
                self._core.remove(name, version)
            log.info("unloaded %s (versions %s) on request", name, versions)

    # --- steps ------------------------------------------------------------------------------

    def _run(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - polling must go on; the next poll may succeed
                log.exception("polling %s failed", self.models_dir)

    def _update(self, name: str, versions: dict[int, Path],
                present: dict[str, set[int] | None]) -> None:
        """Load the newest new version that loads; then unload the versions whose folder is gone
        and those beyond keep_versions. In that order, so that a model is never without one."""
        newest = max((v for v in self._core.versions(name) if v in versions), default=0)
        for version in sorted((v for v in versions if v > newest), reverse=True):
            path = versions[version]
            try:
                if self._failed.get((name, version)) == _signature(path):
                    continue  # failed before and unchanged since
            except OSError:
                continue  # gone since the scan
            started = time.perf_counter()
            try:
                model = self.loader.load_one(name, version, path)
            except ModelLoadError as e:
                log.error("new version %s v%d not served (%s): %s; %s", name, version, path, e,
                          f"v{newest} keeps serving" if newest else "nothing served")
                self._failed[(name, version)] = _signature(path)
                self._refuse(Refusal(name, version, str(e)))
                continue
            self._core.add(model)
            self._refused.pop((name, version), None)
            log.info("now serving %s v%d (%s, loaded and %s in %.2fs)", name, version,
                     model.provider, "verified" if model.spec.verified else
                     "NOT verified: no probe, --allow-unverified", time.perf_counter() - started)
            break
        self._drop_gone(present, name)
        for old in self._core.versions(name)[:-self.keep_versions]:
            self._core.remove(name, old)
            log.info("unloaded %s v%d (--keep-versions %d)", name, old, self.keep_versions)

    def _drop_gone(self, present: dict[str, set[int] | None], only: str | None = None) -> None:
        """Unload the served versions (of `only`, or of every model) whose folder is gone. A
        folder that is there but cannot be read, or lost its model file, is damaged, not gone:
        its loaded session keeps serving."""
        for view in self._core.list_models():
            if only is not None and view.name != only:
                continue
            if view.name not in self.wanted and not _exists(present, view.name, view.version):
                self._core.remove(view.name, view.version)
                log.info("unloaded %s v%d: its folder is gone", view.name, view.version)

    def _refuse(self, refusal: Refusal) -> None:
        self._refused[(refusal.name, refusal.version)] = refusal


def _present(found: Found, scanned: list[Refusal]) -> dict[str, set[int] | None]:
    """Model name -> the versions whose folder is on disk (None: all of them, its folder could
    not be read), from a scan's servable files and refusals."""
    present: dict[str, set[int] | None] = {name: set(versions) for name, versions in found.items()}
    for r in scanned:
        if r.version == 0:
            present[r.name] = None
        elif present.get(r.name, set()) is not None:
            present.setdefault(r.name, set()).add(r.version)
    return present


def _exists(present: dict[str, set[int] | None], name: str, version: int) -> bool:
    """Whether `name` v`version` (or, for a variant, its architecture's version) is on disk."""
    for key in dict.fromkeys((name, split_name(name)[0])):
        versions = present.get(key, set())
        if versions is None or version in versions:
            return True
    return False


class ModelLoadFailed(ServingError):
    """RepositoryModelLoad of a model whose newest version on disk could not be served."""

    code = "FAILED_PRECONDITION"
