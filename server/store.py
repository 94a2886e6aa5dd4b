"""The models folder: find `<models_dir>/<name>/<version>/model.onnx`, pick versions, load runners.

- A version is a folder whose name is a positive integer; anything else (a temporary folder the
  exporter is about to rename, a README) is ignored.
- By default the newest version of each model is loaded; `--model-version NAME=VERSION` (repeatable)
  loads exactly the versions named for that model instead, and naming a version that does not exist
  is a start-up error.
- Everything the server knows about a model comes from the file's metadata_props (fmnist.*). A file
  that fails to load, has a missing or invalid key, or breaks the input/output contract is one log
  line and is skipped; the server still serves the rest.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from server.errors import ModelLoadError, StartupError
from server.providers import ProviderPolicy
from server.runner import NUM_CLASSES, OnnxRunner, Runner

log = logging.getLogger("server.store")

MODEL_FILE = "model.onnx"
REQUIRED_KEYS = ("fmnist.arch", "fmnist.labels", "fmnist.input_side", "fmnist.test_accuracy",
                 "fmnist.bn_folded", "fmnist.bn_remaining", "fmnist.source_checkpoint_sha256",
                 "fmnist.exported_at", "fmnist.torch_version")
_VERSION = re.compile(r"^[0-9]+$")

RunnerFactory = Callable[[Path, list], Runner]  # (model file, providers to ask for) -> runner


@dataclass(frozen=True)
class ModelSpec:
    """One servable model version, as its metadata describes it."""

    name: str
    version: int
    path: Path
    labels: tuple[str, ...]
    input_side: int
    test_accuracy: float
    test_images: int = 0  # what test_accuracy was measured on; 0: the file does not say
    metadata: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class LoadedModel:
    spec: ModelSpec
    runner: Runner

    @property
    def provider(self) -> str:
        return self.runner.provider


def scan(models_dir: str | Path) -> dict[str, dict[int, Path]]:
    """name -> {version: path of model.onnx}, for every integer version folder holding the file."""
    root = Path(models_dir)
    found: dict[str, dict[int, Path]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in model_dir.iterdir():
            if not (version_dir.is_dir() and _VERSION.match(version_dir.name)):
                continue
            version = int(version_dir.name)
            if version <= 0:
                continue
            if not (version_dir / MODEL_FILE).is_file():
                log.warning("skipping %s: no %s inside", version_dir, MODEL_FILE)
                continue
            found.setdefault(model_dir.name, {})[version] = version_dir / MODEL_FILE
    return found


def parse_version_flags(flags: Iterable[str]) -> dict[str, set[int]]:
    """["resnet18=2", "resnet18=3", "lenet=1"] -> {"resnet18": {2, 3}, "lenet": {1}}."""
    wanted: dict[str, set[int]] = {}
    for flag in flags:
        name, sep, version = flag.partition("=")
        if not sep or not name or not _VERSION.match(version) or int(version) <= 0:
            raise ValueError(f"--model-version takes NAME=VERSION with a positive integer "
                             f"version, e.g. resnet18=2; got {flag!r}")
        wanted.setdefault(name, set()).add(int(version))
    return wanted


def pick_versions(found: dict[str, dict[int, Path]],
                  wanted: dict[str, set[int]] | None = None) -> list[tuple[str, int, Path]]:
    """The (name, version, path) to load: the newest of each model, or the versions `wanted` names."""
    wanted = wanted or {}
    picked = []
    for name, versions in sorted(found.items()):
        for version in sorted(wanted.get(name, {max(versions)})):
            if version not in versions:
                raise StartupError(f"--model-version {name}={version}: no such version in the "
                                   f"models folder (found {name} versions {sorted(versions)})")
            picked.append((name, version, versions[version]))
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise StartupError(f"--model-version names {', '.join(missing)}, not in the models folder "
                           f"(found: {', '.join(sorted(found)) or 'no models'})")
    return picked


def parse_metadata(name: str, version: int, path: Path, metadata: dict[str, str]) -> ModelSpec:
    """Validate the fmnist.* metadata_props and build the spec; ModelLoadError names what is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelLoadError(f"missing metadata {', '.join(missing)}")
    if metadata["fmnist.arch"] != name:
        raise ModelLoadError(f"metadata fmnist.arch={metadata['fmnist.arch']!r} does not match "
                             f"its folder name {name!r}")
    try:
        labels = json.loads(metadata["fmnist.labels"])
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"metadata fmnist.labels is not JSON ({e})") from None
    if (not isinstance(labels, list) or len(labels) != NUM_CLASSES
            or not all(isinstance(x, str) and x for x in labels)):
        raise ModelLoadError(f"metadata fmnist.labels must be a JSON list of {NUM_CLASSES} "
                             f"non-empty strings, got {metadata['fmnist.labels'][:200]!r}")
    try:
        input_side = int(metadata["fmnist.input_side"])
        accuracy = float(metadata["fmnist.test_accuracy"])
        test_images = int(metadata.get("fmnist.test_images", 0))
    except ValueError as e:
        raise ModelLoadError(f"metadata fmnist.input_side / fmnist.test_accuracy / fmnist.test_images: {e}") from None
    if input_side <= 0:
        raise ModelLoadError(f"metadata fmnist.input_side must be positive, got {input_side}")
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise ModelLoadError(f"metadata fmnist.test_accuracy must be in [0, 1], got {accuracy}")
    return ModelSpec(name=name, version=version, path=path, labels=tuple(labels),
                     input_side=input_side, test_accuracy=accuracy, test_images=test_images,
                     metadata=dict(metadata))


def load_one(name: str, version: int, path: Path, policy: ProviderPolicy,
             runner_factory: RunnerFactory) -> LoadedModel:
    """Create the session, check the provider and the metadata, warm it up. Raises
    ModelLoadError (skip this model) or StartupError (--device cuda without CUDA: stop)."""
    runner = runner_factory(path, policy.requested())
    try:
        policy.check([runner.provider], f"{name} v{version}")
        spec = parse_metadata(name, version, path, runner.metadata)
        try:
            runner.warmup()
        except Exception as e:  # noqa: BLE001 - a model that cannot run one zero batch is unusable
            raise ModelLoadError(f"warm-up run failed: {type(e).__name__}: {e}") from None
    except BaseException:
        runner.close()
        raise
    return LoadedModel(spec=spec, runner=runner)


def load_models(models_dir: str | Path, policy: ProviderPolicy,
                wanted: dict[str, set[int]] | None = None,
                runner_factory: RunnerFactory | None = None) -> list[LoadedModel]:
    """Load and warm up every picked model; skip (with one log line) those that cannot be served."""
    runner_factory = runner_factory or (lambda path, providers: OnnxRunner(path, providers))
    found = scan(models_dir)
    if not found:
        log.warning("no models found in %s (expected <name>/<version>/%s)", models_dir, MODEL_FILE)
    loaded = []
    for name, version, path in pick_versions(found, wanted):
        started = time.perf_counter()
        try:
            model = load_one(name, version, path, policy, runner_factory)
        except ModelLoadError as e:
            log.error("skipping model %s v%d (%s): %s", name, version, path, e)
            continue
        loaded.append(model)
        log.info("loaded model %s v%d provider=%s test_accuracy=%.4f input_side=%d file=%s "
                 "(%.2fs with warm-up)", name, version, model.provider, model.spec.test_accuracy,
                 model.spec.input_side, path, time.perf_counter() - started)
    if policy.device == "cuda" and not loaded:
        log.warning("--device cuda: no model was loaded, so no session could confirm that the CUDA "
                    "provider is active")
    return loaded
