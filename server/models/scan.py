"""The models folder on disk: which `<models_dir>/<name>/<version>/model.onnx` files may be served.

- A version is a folder named by `model_contract.parse_version` ("3"; never "03" or "3\\n", so no
  two folders name one version); anything else (a temporary folder the exporter is about to
  rename, a README) is ignored, and one log line lists the ignored folders and why.
- Nothing that resolves outside the models folder (a symlinked model folder, version folder or
  model.onnx) is served: the folder is what the operator vouches for.
- A precision variant beside a version's model.onnx (`model.int8.onnx`, `model.fp16.onnx`) is
  found as its own model, "<arch>:<variant>", with that version number.
- By default the newest version of each model that loads is served (the next older one when it
  cannot be); `--model-version NAME=VERSION` names exactly the versions to load instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import model_contract as mc
from server.errors import StartupError
from server.models.spec import Refusal

log = logging.getLogger(__name__)

Found = dict[str, dict[int, Path]]  # name -> {version: path of its model file}


def scan(models_dir: str | Path, refused: list[Refusal] | None = None) -> Found:
    """Every version folder holding a model file inside the models folder. A version folder found
    but not servable (no model file, unreadable, outside) goes to `refused`, as version 0 a model
    folder that cannot be read at all: the repository keeps serving what it loaded from them
    (they are damaged, not gone). OSError when the models folder itself cannot be read or is
    gone (an unmounted volume is not an operator emptying the folder)."""
    root = Path(models_dir)
    found: Found = {}
    if not root.is_dir():
        raise FileNotFoundError(2, "no such folder (or not a folder)", str(root))
    real_root = root.resolve()
    ignored: list[str] = []
    refused = [] if refused is None else refused
    for model_dir in sorted(p for p in root.iterdir()
                            if not p.name.startswith(".") and _is_dir(p)):
        why = mc.unservable_name(model_dir.name) or (
            f"{mc.VARIANT_SEPARATOR!r} is reserved for variants"
            if mc.VARIANT_SEPARATOR in model_dir.name else None)
        if why:  # never a Refusal: ListModels could not carry the name
            ignored.append(f"{_shown(model_dir.name)} (a model name: {why})")
            continue
        if where := _outside(model_dir, real_root):
            ignored.append(f"{_shown(model_dir.name)} ({where})")
            continue
        try:
            _scan_versions(model_dir, real_root, found, ignored, refused)
        except OSError as e:
            ignored.append(f"{_shown(model_dir.name)} (cannot read it: {e.strerror or e})")
            refused.append(Refusal(model_dir.name, 0, f"cannot read its folder: {e.strerror or e}"))
    _report_ignored(root, ignored)
    return found


_last_ignored: dict[Path, list[str]] = {}  # per models folder: what the last scan ignored


def _report_ignored(root: Path, ignored: list[str]) -> None:
    """One log line for what a scan ignored, and none again until that changes (the repository
    scans every --poll-seconds)."""
    if ignored and ignored != _last_ignored.get(root):
        log.warning("ignored in %s: %s. Models are folders named as served (printable UTF-8, at "
                    "most %d bytes) holding versions: folders named 1, 2, 3, ... (ASCII digits, "
                    "no leading zero, at most 18 digits)", _shown(str(root)), ", ".join(ignored),
                    mc.MAX_NAME_BYTES)
    _last_ignored[root] = ignored


def _scan_versions(model_dir: Path, real_root: Path, found: Found, ignored: list[str],
                   refused: list[Refusal]) -> None:
    for version_dir in sorted(p for p in model_dir.iterdir() if _is_dir(p)):
        shown = _shown(f"{model_dir.name}/{version_dir.name}")
        version = mc.parse_version(version_dir.name)
        if version is None:
            if not version_dir.name.startswith("."):  # the exporter's folders before rename
                ignored.append(f"{shown} (not a version name)")
            continue
        path = version_dir / mc.MODEL_FILE
        reason = (_outside(version_dir, real_root) or _outside(path, real_root)
                  or _not_a_file(path))
        if reason:
            ignored.append(f"{shown} ({reason})")
            refused.append(Refusal(model_dir.name, version, reason))
            continue
        found.setdefault(model_dir.name, {})[version] = path
        for variant in mc.VARIANTS:
            variant_path = version_dir / mc.variant_file(variant)
            if not _not_a_file(variant_path) and not _outside(variant_path, real_root):
                found.setdefault(mc.served_name(model_dir.name, variant), {})[version] = \
                    variant_path


def _shown(name: str) -> str:
    """A name as a log line shows it: quoted, with control characters and bytes that are not
    UTF-8 escaped, so no folder name can forge a line."""
    return repr(name)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _not_a_file(path: Path) -> str | None:
    """Why `path` is not a model file that can be read, or None."""
    try:
        if not path.is_file():
            return f"no {path.name} inside"
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"cannot read {path.name}: {e.strerror or e}"


def _outside(path: Path, real_root: Path) -> str | None:
    """Why `path` may not be served when it resolves outside `real_root` (a symlink out); None
    when it stays inside."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"cannot resolve it: {e}"
    if real.is_relative_to(real_root):
        return None
    return f"resolves to {str(real)!r}, outside the models folder {str(real_root)!r}"


def looks_like_one_model(models_dir: str | Path) -> bool:
    """Whether the folder holds versions itself (`1/model.onnx`): one model's folder given where
    the folder of models was meant."""
    try:
        return any(mc.parse_version(p.name) is not None and (p / mc.MODEL_FILE).is_file()
                   for p in Path(models_dir).iterdir())
    except OSError:
        return False


def parse_version_flags(flags: Iterable[str]) -> dict[str, set[int]]:
    """["resnet18=2", "resnet18=3", "lenet=1"] -> {"resnet18": {2, 3}, "lenet": {1}}."""
    wanted: dict[str, set[int]] = {}
    for flag in flags:
        name, sep, text = flag.partition("=")
        version = mc.parse_version(text)
        if not sep or not name or version is None:
            raise ValueError(f"--model-version takes NAME=VERSION with a version as its folder is "
                             f"named (1, 2, ...; no leading zero), e.g. resnet18=2; got {flag!r}")
        wanted.setdefault(name, set()).add(version)
    return wanted


def pick_versions(found: Found, wanted: dict[str, set[int]] | None = None
                  ) -> list[tuple[str, list[tuple[int, Path]]]]:
    """What to try to load, one entry per version to serve: (name, candidates), where the first
    candidate that loads is served. Without `wanted`, each model's versions newest first (so a
    broken newest version falls back to an older one); a version `wanted` names is alone."""
    wanted = wanted or {}
    picked = []
    for name, versions in sorted(found.items()):
        if name not in wanted:
            picked.append((name, sorted(versions.items(), reverse=True)))
            continue
        for version in sorted(wanted[name]):
            if version not in versions:
                raise StartupError(f"--model-version {name}={version}: no such version in the "
                                   f"models folder (found {name} versions {sorted(versions)})")
            picked.append((name, [(version, versions[version])]))
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise StartupError(f"--model-version names {', '.join(missing)}, not in the models folder "
                           f"(found: {', '.join(sorted(found)) or 'no models'})")
    return picked
