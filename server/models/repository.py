"""The live model repository: the models folder is watched, and the served versions follow it.

    repo = Repository("artifacts/models", policy, runner_factory, keep_versions=1)
    core = Core(repo.load_all(), limits, batching, repo.refused())
    repo.attach(core)
    repo.start(poll_seconds=5)           # a thread polls the folder
    repo.load("resnet18"); repo.unload("lenet")   # on demand (v2 RepositoryModelLoad/Unload)

Each poll, per model:
- a version folder newer than the newest served appears (the exporter renames a finished folder
  into place, so a folder is whole when it appears): it is loaded, warmed, probe-verified
  (server/models/loading.py) and only then becomes the newest; the older ones beyond `keep_versions` are
  drained and unloaded (`Core.remove` waits for the requests that chose them). A request never
  fails because of a swap;
- a version that fails to load is logged, listed as refused, and not tried again until its file
  changes; what was served keeps serving;
- a served version whose folder is gone is drained and unloaded.
Models pinned with --model-version are left as they are; a model unloaded on demand stays
unloaded until it is loaded on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from server.errors import ModelLoadError, ModelNotFound, ServingError
from server.models.providers import ProviderPolicy
from server.models.loading import LoadedModel, load_models, load_one
from server.models.scan import scan
from server.models.spec import Refusal
from server.models.verify import RunnerFactory

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class Repository:
    def __init__(self, models_dir: str | Path, policy: ProviderPolicy,
                 runner_factory: RunnerFactory, wanted: dict[str, set[int]] | None = None,
                 keep_versions: int = 1):
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions}")
        self.models_dir = Path(models_dir)
        self.policy = policy
        self.runner_factory = runner_factory
        self.wanted = wanted or {}
        self.keep_versions = keep_versions
        self._core = None
        self._refused: dict[tuple[str, int], Refusal] = {}
        self._failed: dict[tuple[str, int], tuple[int, int]] = {}  # file signature that failed
        self._unloaded: set[str] = set()  # unloaded on demand: polling leaves them alone
        self._lock = threading.Lock()  # one poll or on-demand change at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_all(self) -> list[LoadedModel]:
        """The start-up load (newest loadable version of each model, or the pinned ones)."""
        refused: list[Refusal] = []
        models = load_models(self.models_dir, self.policy, self.wanted, self.runner_factory,
                             refused)
        for r in refused:
            self._refuse(r)
        return models

    def refused(self) -> list[Refusal]:
        return sorted(self._refused.values(), key=lambda r: (r.name, r.version))

    def attach(self, core) -> None:
        self._core = core

    def start(self, poll_seconds: float) -> None:
        if poll_seconds <= 0 or self._thread is not None:
            return
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
            refused: list[Refusal] = []
            found = scan(self.models_dir, refused)
            for r in refused:
                self._refuse(r)
            for name, versions in sorted(found.items()):
                if name not in self.wanted and name not in self._unloaded:
                    self._update(name, versions)
            self._drop_missing(found)
            self._core.refused = self.refused()

    def load(self, name: str) -> None:
        """Load (or reload) the newest loadable version of `name` now."""
        with self._lock:
            self._unloaded.discard(name)
            found = scan(self.models_dir).get(name)
            if not found:
                raise ModelNotFound(f"no model {name!r} in the models folder")
            for version in found:  # an explicit load retries what failed before
                self._failed.pop((name, version), None)
            self._update(name, found)
            self._core.refused = self.refused()
            if not self._core.versions(name):
                reasons = "; ".join(f"v{r.version}: {r.reason}" for r in self.refused()
                                    if r.name == name)
                raise ModelLoadFailed(f"model {name!r} could not be loaded ({reasons})")

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

    def _update(self, name: str, versions: dict[int, Path]) -> None:
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
                model = load_one(name, version, path, self.policy, self.runner_factory)
            except ModelLoadError as e:
                log.error("new version %s v%d not served (%s): %s; %s", name, version, path, e,
                          f"v{newest} keeps serving" if newest else "nothing served")
                self._failed[(name, version)] = _signature(path)
                self._refuse(Refusal(name, version, str(e)))
                continue
            self._core.add(model)
            self._refused.pop((name, version), None)
            log.info("now serving %s v%d (%s, loaded and verified in %.2fs)", name, version,
                     model.provider, time.perf_counter() - started)
            break
        for gone in [v for v in self._core.versions(name) if v not in versions]:
            self._core.remove(name, gone)
            log.info("unloaded %s v%d: its folder is gone", name, gone)
        for old in self._core.versions(name)[:-self.keep_versions]:
            self._core.remove(name, old)
            log.info("unloaded %s v%d (--keep-versions %d)", name, old, self.keep_versions)

    def _drop_missing(self, found: dict[str, dict[int, Path]]) -> None:
        """Models whose folder is gone altogether (the others are handled by _update)."""
        for view in self._core.list_models():
            if view.name not in found and view.name not in self.wanted:
                self._core.remove(view.name, view.version)
                log.info("unloaded %s v%d: its folder is gone", view.name, view.version)
        for key in [k for k in self._refused if k[1] not in found.get(k[0], {})]:
            del self._refused[key]

    def _refuse(self, refusal: Refusal) -> None:
        self._refused[(refusal.name, refusal.version)] = refusal


class ModelLoadFailed(ServingError):
    """RepositoryModelLoad of a model none of whose versions loads."""

    code = "FAILED_PRECONDITION"
