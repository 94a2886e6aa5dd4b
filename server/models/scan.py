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
    """Every version folder holding a model file inside the models folder. Version folders
    refused here (no model file, outside) go to `refused`."""
    root = Path(models_dir)
    found: Found = {}
    if not root.is_dir():
        return found
    real_root = root.resolve()
    ignored: list[str] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if mc.VARIANT_SEPARATOR in model_dir.name:  # would clash with "<arch>:<variant>" names
            ignored.append(f"{model_dir.name!r} ({mc.VARIANT_SEPARATOR!r} is reserved for variants)")
            continue
        if where := _outside(model_dir, real_root):
            ignored.append(f"{model_dir.name!r} ({where})")
            continue
        _scan_versions(model_dir, real_root, found, ignored, refused)
    if ignored:
        log.warning("ignored in %s: %s. Versions are folders named 1, 2, 3, ... (ASCII digits, no "
                    "leading zero, at most 18 digits) inside the models folder",
                    root, ", ".join(ignored))
    return found


def _scan_versions(model_dir: Path, real_root: Path, found: Found, ignored: list[str],
                   refused: list[Refusal] | None) -> None:
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        shown = repr(f"{model_dir.name}/{version_dir.name}")
        version = mc.parse_version(version_dir.name)
        if version is None:
            if not version_dir.name.startswith("."):  # the exporter's folders before rename
                ignored.append(f"{shown} (not a version name)")
            continue
        path = version_dir / mc.MODEL_FILE
        reason = (_outside(version_dir, real_root) or _outside(path, real_root)
                  or (None if path.is_file() else f"no {mc.MODEL_FILE} inside"))
        if reason:
            ignored.append(f"{shown} ({reason})")
            if refused is not None:
                refused.append(Refusal(model_dir.name, version, reason))
            continue
        found.setdefault(model_dir.name, {})[version] = path
        for variant in mc.VARIANTS:
            variant_path = version_dir / mc.variant_file(variant)
            if variant_path.is_file() and not _outside(variant_path, real_root):
                found.setdefault(mc.served_name(model_dir.name, variant), {})[version] = \
                    variant_path


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
