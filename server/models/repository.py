"""The models folder as versions to serve: it scans, loads and verifies, and hands back what it
found; the dataplane (server/dataplane/control.py) owns what is served and applies the changes.

    repo = Repository("artifacts/models", Loader(ProviderPolicy("auto")), keep_versions=1)
    models, refused = repo.load_all()                 # at start-up
    changes = repo.poll(served={"lenet": [1]})        # later, from a thread: what to add/remove
    changes = repo.load("resnet18", served)           # on demand (v2 RepositoryModelLoad)

Each poll, per model (but those pinned with --model-version and those `skip`ped: unloaded on
demand, which stay unloaded until loaded on demand):
- a version folder newer than the newest served appears (the exporter renames a finished folder
  into place, so a folder is whole when it appears): it is loaded, warmed, probe-verified
  (server/models/loading.py) and only then handed back to be served, as the newest; the older
  ones beyond `keep_versions` are to be removed after it, so a model is never without one;
- a version that fails to load is logged, listed as refused, and not tried again until its file
  changes; what was served keeps serving;
- a served version whose folder is gone is to be removed; one whose folder is there but damaged
  (unreadable, its model file gone or corrupted) keeps serving what was loaded.
Nothing here holds a reference to the dataplane: what is served comes in as a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from model_contract import split_name
from server.errors import ModelLoadError, ModelNotFound, ServingError
from server.models.loading import LoadedModel, Loader
from server.models.scan import Found, scan
from server.models.spec import Refusal

log = logging.getLogger(__name__)

Served = Mapping[str, list[int]]  # model name -> versions served now, oldest first


@dataclass
class Changes:
    """What a look at the folder found: versions to serve (loaded and verified, in order),
    versions to stop serving and why, every version found but not served, and an error to
    report once the changes are applied (an on-demand load whose newest version failed)."""

    add: list[LoadedModel] = field(default_factory=list)
    remove: list[tuple[str, int, str]] = field(default_factory=list)  # name, version, why
    refused: list[Refusal] | None = None  # None: unknown (the folder could not be read)
    error: ServingError | None = None


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
        self._refused: dict[tuple[str, int], Refusal] = {}
        self._failed: dict[tuple[str, int], tuple[int, int]] = {}  # file signature that failed
        self._unreadable = False  # the models folder could not be read at the last look

    def load_all(self) -> tuple[list[LoadedModel], list[Refusal]]:
        """The start-up load (newest loadable version of each model, or the pinned ones)."""
        refused: list[Refusal] = []
        models = self.loader.load_all(self.models_dir, self.wanted, refused)
        for r in refused:
            self._refused[(r.name, r.version)] = r
        return models, self.refused()

    def refused(self) -> list[Refusal]:
        return sorted(self._refused.values(), key=lambda r: (r.name, r.version))

    def poll(self, served: Served, skip: set[str] = frozenset()) -> Changes:
        """Bring `served` in line with the folder, once: what to add and remove."""
        changes = Changes()
        scanned: list[Refusal] = []
        try:
            found = scan(self.models_dir, scanned)
        except OSError as e:  # the whole folder: what is loaded keeps serving
            if not self._unreadable:
                log.error("cannot read the models folder %s (%s); the versions loaded keep "
                          "serving", self.models_dir, e.strerror or e)
            self._unreadable = True
            return changes
        self._unreadable = False
        present = _present(found, scanned)
        for r in scanned:
            self._refused[(r.name, r.version)] = r
        after = {name: list(versions) for name, versions in served.items()}
        for name, versions in sorted(found.items()):
            if name not in self.wanted and name not in skip:
                self._update(name, versions, present, after, changes)
        self._drop_gone(present, after, changes)
        self._forget(present, after)
        changes.refused = self.refused()
        log.debug("polled %s: %d model(s) on disk, %d refused", self.models_dir, len(present),
                  len(self._refused))
        return changes

    def load(self, name: str, served: Served) -> Changes:
        """Load (or reload) the newest loadable version of `name` now. ModelNotFound when the
        folder has no such model; otherwise the changes, with `error` (ModelLoadFailed, with the
        reason) when the newest version on disk could not be served, so that a rollout script
        learns that its version failed even while an older one keeps serving."""
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
            self._refused[(r.name, r.version)] = r
        for version in found:  # an explicit load retries what failed before
            self._failed.pop((name, version), None)
        changes = Changes()
        after = {n: list(v) for n, v in served.items()}
        self._update(name, found, _present(everything, scanned), after, changes)
        self._forget(_present(everything, scanned), after)
        changes.refused = self.refused()
        newest = max(on_disk)
        if newest not in after.get(name, []):
            reason = self._refused.get((name, newest))
            kept = after.get(name, [])
            changes.error = ModelLoadFailed(
                f"model {name!r} v{newest} was not loaded: "
                f"{reason.reason if reason else 'its folder cannot be read'}; "
                + (f"v{kept[-1]} keeps serving" if kept else "no version is served"))
        return changes

    # --- steps ------------------------------------------------------------------------------

    def _update(self, name: str, versions: dict[int, Path], present: dict[str, set[int] | None],
                after: dict[str, list[int]], changes: Changes) -> None:
        """Load the newest new version that loads; then remove the versions whose folder is gone
        and those beyond keep_versions. In that order, so that a model is never without one.
        `after` is what will be served once `changes` are applied; it is kept up to date."""
        serving = after.setdefault(name, [])
        newest = max((v for v in serving if v in versions), default=0)
        for version in sorted((v for v in versions if v > newest), reverse=True):
            model = self._load(name, version, versions[version], newest)
            if model is not None:
                changes.add.append(model)
                serving.append(version)
                serving.sort()
                self._refused.pop((name, version), None)
                break
        self._drop_gone(present, after, changes, only=name)
        for old in serving[:-self.keep_versions]:
            changes.remove.append((name, old, f"--keep-versions {self.keep_versions}"))
            serving.remove(old)

    def _load(self, name: str, version: int, path: Path, newest: int) -> LoadedModel | None:
        """One new version, loaded and verified, or None (refused, logged; not tried again
        until its file changes)."""
        try:
            if self._failed.get((name, version)) == _signature(path):
                return None  # failed before and unchanged since
        except OSError:
            return None  # gone since the scan
        started = time.perf_counter()
        try:
            model = self.loader.load_one(name, version, path)
        except ModelLoadError as e:
            log.error("new version %s v%d not served (%s): %s; %s", name, version, path, e,
                      f"v{newest} keeps serving" if newest else "nothing served")
            self._failed[(name, version)] = _signature(path)
            self._refused[(name, version)] = Refusal(name, version, str(e))
            return None
        log.info("loaded %s v%d (%s, %s in %.2fs)", name, version, model.provider,
                 "verified" if model.spec.verified else
                 "NOT verified: no probe, --allow-unverified", time.perf_counter() - started)
        return model

    def _drop_gone(self, present: dict[str, set[int] | None], after: dict[str, list[int]],
                   changes: Changes, only: str | None = None) -> None:
        """Remove the served versions (of `only`, or of every model) whose folder is gone. A
        folder that is there but cannot be read, or lost its model file, is damaged, not gone:
        its loaded session keeps serving."""
        for name, versions in after.items():
            if (only is not None and name != only) or name in self.wanted:
                continue
            for version in [v for v in versions if not _exists(present, name, v)]:
                changes.remove.append((name, version, "its folder is gone"))
                versions.remove(version)

    def _forget(self, present: dict[str, set[int] | None], after: dict[str, list[int]]) -> None:
        """Refusals of versions no longer on disk, or served now, are forgotten."""
        self._refused = {k: r for k, r in self._refused.items()
                         if _exists(present, *k) and k[1] not in after.get(k[0], [])}


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
