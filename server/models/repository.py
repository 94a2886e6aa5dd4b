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
- a version that fails to load is refused (ERROR, listed with its reason) once its file looked
  the same at two polls in a row, and not tried again until its file changes; before that it is
  "incomplete" (one INFO line): a copy still in progress is not an error every poll;
- a served version whose folder is gone is to be removed; one whose folder is there but damaged
  (unreadable, its model file gone or corrupted) keeps serving what was loaded;
- a served version whose file became unreadable, or changed in place since it was loaded (size or
  modification time), keeps serving the loaded copy, with one WARNING (and one INFO when it is
  back) and `file_problems()` for /metrics: a restart would load what is on disk now.
Storage faults: a models folder that vanishes or cannot be read (an unmounted volume) changes
nothing that is served; one ERROR line, one INFO line when it is back, `folder_ok` for /metrics.
Nothing here holds a reference to the dataplane: what is served comes in as a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
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
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}  # a new file's signature, last look
        self._loaded: dict[tuple[str, int], tuple[Path, tuple[int, int]]] = {}  # as loaded
        self._problems: dict[tuple[str, int], str] = {}  # served versions whose file is not so
        self.folder_ok = True  # the models folder could be read at the last look
        self._on_loading: Callable[[str, int], None] | None = None

    def load_all(self) -> tuple[list[LoadedModel], list[Refusal]]:
        """The start-up load (newest loadable version of each model, or the pinned ones)."""
        refused: list[Refusal] = []
        models = self.loader.load_all(self.models_dir, self.wanted, refused)
        for r in refused:
            self._refused[(r.name, r.version)] = r
        for model in models:
            self._remember(model)
        return models, self.refused()

    def file_problems(self) -> dict[tuple[str, int], str]:
        """Served versions whose file on disk is no longer what was loaded, and how."""
        return dict(self._problems)

    def refused(self) -> list[Refusal]:
        return sorted(self._refused.values(), key=lambda r: (r.name, r.version))

    def poll(self, served: Served, skip: set[str] = frozenset(),
             on_loading: Callable[[str, int], None] | None = None) -> Changes:
        """Bring `served` in line with the folder, once: what to add and remove. `on_loading` is
        told each new version before it loads (the control may take the server out of rotation
        meanwhile)."""
        self._on_loading = on_loading
        changes = Changes()
        scanned: list[Refusal] = []
        try:
            found = scan(self.models_dir, scanned)
        except OSError as e:  # the whole folder: what is loaded keeps serving
            if self.folder_ok:
                log.error("cannot read the models folder %s (%s); the versions loaded keep "
                          "serving, and nothing is unloaded until it can be read again",
                          self.models_dir, e.strerror or e)
            self.folder_ok = False
            return changes
        if not self.folder_ok:
            log.info("the models folder %s can be read again", self.models_dir)
        self.folder_ok = True
        present = _present(found, scanned)
        for r in scanned:
            self._refused[(r.name, r.version)] = r
        after = {name: list(versions) for name, versions in served.items()}
        for name, versions in sorted(found.items()):
            if name not in self.wanted and name not in skip:
                self._update(name, versions, present, after, changes)
        self._drop_gone(present, after, changes)
        self._forget(present, after)
        self._check_files(after)
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
        self._update(name, found, _present(everything, scanned), after, changes, explicit=True)
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
                after: dict[str, list[int]], changes: Changes, explicit: bool = False) -> None:
        """Load the newest new version that loads; then remove the versions whose folder is gone
        and those beyond keep_versions. In that order, so that a model is never without one.
        `after` is what will be served once `changes` are applied; it is kept up to date. A
        served version whose file cannot be loaded now (unreadable) is still the newest: an
        older one is not loaded in its place."""
        serving = after.setdefault(name, [])
        newest = max((v for v in serving if _exists(present, name, v)), default=0)
        for version in sorted((v for v in versions if v > newest), reverse=True):
            model = self._load(name, version, versions[version], newest, explicit)
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

    def _load(self, name: str, version: int, path: Path, newest: int,
              explicit: bool) -> LoadedModel | None:
        """One new version, loaded and verified, or None: refused (logged; not tried again until
        its file changes), or, on a poll, incomplete while its file still changes between looks."""
        key = (name, version)
        try:
            signature = _signature(path)
        except OSError:
            return None  # gone since the scan
        if self._failed.get(key) == signature:
            return None  # failed before and unchanged since
        if self._on_loading is not None:
            self._on_loading(name, version)
        started = time.perf_counter()
        try:
            model = self.loader.load_one(name, version, path)
        except ModelLoadError as e:
            if not explicit and self._seen.get(key) != signature:
                if key not in self._seen:
                    log.info("new version %s v%d is not loadable yet (%s); incomplete, or still "
                             "being copied? Refused if it stays so", name, version, e)
                self._seen[key] = signature
                return None
            log.error("new version %s v%d not served (%s): %s; %s", name, version, path, e,
                      f"v{newest} keeps serving" if newest else "nothing served")
            self._failed[key] = signature
            self._refused[key] = Refusal(name, version, str(e))
            return None
        self._seen.pop(key, None)
        self._remember(model)
        log.info("loaded %s v%d (%s, %s in %.2fs)", name, version, model.provider,
                 "verified" if model.spec.verified else
                 "NOT verified: no probe, --allow-unverified", time.perf_counter() - started)
        return model

    def _remember(self, model: LoadedModel) -> None:
        """What a served version's file looked like when it was loaded."""
        path = model.spec.path
        try:
            self._loaded[(model.spec.name, model.spec.version)] = (path, _signature(path))
        except OSError:  # gone already: the next look says so
            pass

    def _check_files(self, after: dict[str, list[int]]) -> None:
        """Each served version's file against what was loaded: one line when that changes."""
        served = {(name, v) for name, versions in after.items() for v in versions}
        for key in [k for k in self._loaded if k not in served]:
            del self._loaded[key]
            self._problems.pop(key, None)
        for key, (path, signature) in self._loaded.items():
            problem = _file_problem(path, signature)
            if problem != self._problems.get(key):
                if problem:
                    log.warning("%s v%d: its file %s; the loaded copy keeps serving, but a "
                                "restart would not serve it as it is", *key, problem)
                else:
                    log.info("%s v%d: its file is as it was loaded again", *key)
            if problem:
                self._problems[key] = problem
            else:
                self._problems.pop(key, None)

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


def _file_problem(path: Path, loaded: tuple[int, int]) -> str | None:
    """How a served file differs from what was loaded (None: it does not)."""
    try:
        with open(path, "rb"):
            now = _signature(path)
    except OSError as e:
        return f"cannot be read now ({e.strerror or e})"
    if now != loaded:
        return (f"changed on disk since it was loaded ({now[1]:,} bytes, was {loaded[1]:,}"
                f"{', modified since' if now[0] != loaded[0] else ''})")
    return None


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
