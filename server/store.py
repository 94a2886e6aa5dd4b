"""The models folder: find `<models_dir>/<name>/<version>/model.onnx`, pick versions, load runners.

- A version is a folder named by `model_contract.parse_version` ("3"; never "03" or "3\n", so no
  two folders name one version); anything else (a temporary folder the exporter is about to
  rename, a README) is ignored, and one log line lists the ignored folders and why.
- Nothing that resolves outside the models folder (a symlinked model folder, version folder or
  model.onnx) is served: the folder is what the operator vouches for.
- By default the newest version of each model that loads is served: when it cannot be served, the
  next older one is tried. `--model-version NAME=VERSION` (repeatable) loads exactly the versions
  named for that model instead, with no fallback, and naming a version that does not exist is a
  start-up error.
- A precision variant beside a version's model.onnx (`model.int8.onnx`, `model.fp16.onnx`;
  exporter/variants.py) is served as its own model, "<arch>:<variant>" (`resnet18:int8`), with
  that version number; its probe is checked against the variant's own tolerance, and on load its
  batch-32 speed is measured against the fp32 file beside it on the same provider, so ListModels
  says when it is slower than fp32 on the machine at hand.
- Everything the server knows about a model comes from the file's metadata_props (fmnist.*), each
  value bounded so that nothing read from a file can break ListModels for everyone. A file that
  fails to load, has a missing or invalid key, breaks the input/output contract, or answers its
  probe differently from the exporter is one log line, a `Refusal`, and is skipped; the server
  still serves the rest.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import model_contract as mc
from server.errors import ModelLoadError, StartupError
from server.providers import ProviderPolicy
from server.runner import OnnxRunner, Runner

log = logging.getLogger("server.store")

RunnerFactory = Callable[[Path, list], Runner]  # (model file, providers to ask for) -> runner

INT32_MAX = 2**31 - 1  # ListModels sends input_side and test_images as int32
_METADATA_INT = re.compile(r"[0-9]{1,10}")
MAX_LABELS_CHARS = 2000  # ten class names; bounded before json.loads sees it


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
    # max |Δ probability| of the probe run on the serving provider against the exporter's run;
    # None: the file has no probe (exported before probes), so it was served unverified
    probe_max_abs_diff: float | None = None
    variant: str = ""  # "" for the fp32 model, else "int8" / "fp16" (model_contract.VARIANTS)
    fp32_agreement: float | None = None  # a variant's top-1 agreement with fp32 (exporter's)
    # a variant's batch-32 images/s over its fp32 model's, measured here at load on the same
    # provider; None: not measured (fp32 itself, or no fp32 file beside it)
    speedup_vs_fp32: float | None = None


@dataclass(frozen=True)
class Refusal:
    """A model version that was found but not served, and why (for logs and ListModels)."""

    name: str
    version: int
    reason: str


@dataclass
class LoadedModel:
    spec: ModelSpec
    runner: Runner

    @property
    def provider(self) -> str:
        return self.runner.provider


def scan(models_dir: str | Path,
         refused: list[Refusal] | None = None) -> dict[str, dict[int, Path]]:
    """name -> {version: path of model.onnx}, for every version folder holding the file inside the
    models folder. Version folders refused here (no model file, outside) go to `refused`."""
    root = Path(models_dir)
    found: dict[str, dict[int, Path]] = {}
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
    if ignored:
        log.warning("ignored in %s: %s. Versions are folders named 1, 2, 3, ... (ASCII digits, no "
                    "leading zero, at most 18 digits) inside the models folder",
                    root, ", ".join(ignored))
    return found


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


def pick_versions(found: dict[str, dict[int, Path]], wanted: dict[str, set[int]] | None = None
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


def parse_metadata(name: str, version: int, path: Path, metadata: dict[str, str]) -> ModelSpec:
    """Validate the fmnist.* metadata_props and build the spec; ModelLoadError names what is wrong."""
    missing = [k for k in mc.REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelLoadError(f"missing metadata {', '.join(missing)}")
    arch, variant = mc.split_name(name)
    if metadata[mc.ARCH] != arch:
        raise ModelLoadError(f"metadata {mc.ARCH}={metadata[mc.ARCH][:100]!r} does not match "
                             f"its folder name {arch!r}")
    if metadata.get(mc.VARIANT) != variant:
        raise ModelLoadError(f"metadata {mc.VARIANT}={metadata.get(mc.VARIANT, '(none)')[:20]!r} "
                             f"does not match its file {path.name!r}")
    fp32_agreement = None
    if variant:
        try:
            fp32_agreement = float(metadata[mc.FP32_AGREEMENT])
        except (KeyError, ValueError) as e:
            raise ModelLoadError(f"metadata {mc.FP32_AGREEMENT}: {type(e).__name__}: {e}") from None
        if not 0.0 <= fp32_agreement <= 1.0:
            raise ModelLoadError(f"metadata {mc.FP32_AGREEMENT} must be in [0, 1]")
    try:
        accuracy = float(metadata[mc.TEST_ACCURACY])
    except ValueError as e:
        raise ModelLoadError(f"metadata {mc.TEST_ACCURACY}: {e}") from None
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise ModelLoadError(f"metadata {mc.TEST_ACCURACY} must be in [0, 1], got {accuracy}")
    test_images = _metadata_int(metadata, mc.TEST_IMAGES) if mc.TEST_IMAGES in metadata else 0
    return ModelSpec(name=name, version=version, path=path, labels=_labels(metadata[mc.LABELS]),
                     input_side=_metadata_int(metadata, mc.INPUT_SIDE), test_accuracy=accuracy,
                     test_images=test_images, metadata=dict(metadata), variant=variant or "",
                     fp32_agreement=fp32_agreement)


def _labels(text: str) -> tuple[str, ...]:
    """The class names, bounded before parsing: json.loads of a deeply nested value raises
    RecursionError, and a name protobuf cannot encode would break every ListModels."""
    if len(text) > MAX_LABELS_CHARS:
        raise ModelLoadError(f"metadata {mc.LABELS} has {len(text)} characters, more than the "
                             f"{MAX_LABELS_CHARS} ten class names need")
    try:
        labels = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelLoadError(f"metadata {mc.LABELS} is not JSON "
                             f"({type(e).__name__}: {e})") from None
    if (not isinstance(labels, list) or len(labels) != mc.NUM_CLASSES
            or not all(isinstance(x, str) and x for x in labels)):
        raise ModelLoadError(f"metadata {mc.LABELS} must be a JSON list of {mc.NUM_CLASSES} "
                             f"non-empty strings, got {text[:200]!r}")
    try:
        for label in labels:
            label.encode("utf-8")
    except UnicodeEncodeError:
        raise ModelLoadError(f"metadata {mc.LABELS} has a name that is not valid UTF-8 "
                             f"(a lone surrogate escape): {text[:200]!r}") from None
    return tuple(labels)


def _metadata_int(metadata: dict[str, str], key: str) -> int:
    """An integer from 1 to 2^31-1 (what ListModels' int32 fields can carry), in ASCII digits."""
    text = metadata[key]
    value = int(text) if _METADATA_INT.fullmatch(text) else 0
    if not 1 <= value <= INT32_MAX:
        raise ModelLoadError(f"metadata {key} must be an integer from 1 to {INT32_MAX}, "
                             f"got {text[:40]!r}")
    return value


def verify_probe(runner: Runner, metadata: dict[str, str]) -> float | None:
    """Run the exporter's probe images on the provider this runner really uses and return the max
    |Δ probability| against the exporter's; ModelLoadError when it is over PROBE_TOLERANCE (a
    provider or a file that answers differently from what was exported). None: no probe."""
    if mc.PROBE not in metadata:
        return None
    try:
        probe = mc.decode_probe(metadata[mc.PROBE])
    except ValueError as e:
        raise ModelLoadError(f"malformed probe: {e}") from None
    try:
        served = np.asarray(runner.run(probe.images).probabilities, np.float32)
        diff = float(np.max(np.abs(served - probe.probabilities)))
    except Exception as e:  # noqa: BLE001 - a model that cannot run its probe is unusable
        raise ModelLoadError(f"probe run failed: {type(e).__name__}: {e}") from None
    tolerance = probe_tolerance(metadata)
    if not diff <= tolerance:  # also NaN
        raise ModelLoadError(f"probe: on {runner.provider} its {len(probe.images)} images' "
                             f"probabilities differ from the exporter's by max |Δ| {diff:.3g}, "
                             f"over the tolerance {tolerance:g}; re-export the model, or "
                             f"serve it with another --device")
    return diff


def probe_tolerance(metadata: dict[str, str]) -> float:
    """The fp32 tolerance, or the variant's (model_contract.VARIANT_PROBE_TOLERANCE)."""
    return mc.VARIANT_PROBE_TOLERANCE.get(metadata.get(mc.VARIANT, ""), mc.PROBE_TOLERANCE)


def speedup_vs_fp32(runner: Runner, fp32_path: Path, providers: list,
                    runner_factory: RunnerFactory, batch: int = 32, seconds: float = 0.5
                    ) -> float | None:
    """A variant's batch-`batch` images/s over the fp32 model's beside it, both on this machine
    and provider (a 2-core AVX2 CPU without VNNI runs INT8 slower than fp32, one with VNNI or AMX
    2-3x faster: only a measurement here says which). None when there is no fp32 file."""
    if not fp32_path.is_file():
        return None
    fp32 = runner_factory(fp32_path, providers)
    try:
        images = np.random.default_rng(0).integers(0, 256, (batch, 1, mc.SIDE, mc.SIDE),
                                                   dtype=np.uint8)
        rates = []
        for r in (fp32, runner, fp32, runner):  # in turns: a burst of load spoils both alike
            r.run(images)
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < seconds / 4:
                r.run(images)
                calls += 1
            rates.append(calls * batch / (time.perf_counter() - start))
        return max(rates[1], rates[3]) / max(rates[0], rates[2])
    finally:
        fp32.close()


def load_one(name: str, version: int, path: Path, policy: ProviderPolicy,
             runner_factory: RunnerFactory) -> LoadedModel:
    """Create the session, check the provider and the metadata, warm it up, run the probe. Raises
    ModelLoadError (skip this version) or StartupError (--device cuda without CUDA: stop)."""
    runner = runner_factory(path, policy.requested())
    try:
        policy.check([runner.provider], f"{name} v{version}")
        spec = parse_metadata(name, version, path, runner.metadata)
        try:
            runner.warmup()
        except Exception as e:  # noqa: BLE001 - a model that cannot run one zero batch is unusable
            raise ModelLoadError(f"warm-up run failed: {type(e).__name__}: {e}") from None
        spec = replace(spec, probe_max_abs_diff=verify_probe(runner, runner.metadata))
        if spec.variant:
            try:
                ratio = speedup_vs_fp32(runner, path.parent / mc.MODEL_FILE,
                                        policy.requested(), runner_factory)
            except Exception as e:  # noqa: BLE001 - a broken fp32 file beside it is its own refusal
                log.warning("%s v%d: speed against fp32 not measured: %s: %s", name, version,
                            type(e).__name__, e)
                ratio = None
            spec = replace(spec, speedup_vs_fp32=ratio)
            if ratio is not None and ratio < 1:
                log.warning("%s v%d is slower than its fp32 model on this machine (%s): %.2fx at "
                            "batch 32; ListModels says so", name, version, runner.provider, ratio)
    except BaseException:
        runner.close()
        raise
    return LoadedModel(spec=spec, runner=runner)


def load_newest(name: str, candidates: list[tuple[int, Path]], policy: ProviderPolicy,
                runner_factory: RunnerFactory, refused: list[Refusal]) -> LoadedModel | None:
    """The first of `candidates` (newest first) that loads; each one refused is logged and
    appended to `refused`. None when none loads."""
    for version, path in candidates:
        started = time.perf_counter()
        try:
            model = load_one(name, version, path, policy, runner_factory)
        except ModelLoadError as e:
            log.error("skipping model %s v%d (%s): %s", name, version, path, e)
            refused.append(Refusal(name, version, str(e)))
            continue
        _log_loaded(model, time.perf_counter() - started)
        if version != candidates[0][0]:
            log.warning("serving %s v%d instead of v%d: the newer version(s) cannot be served "
                        "(reasons above)", name, version, candidates[0][0])
        return model
    if len(candidates) > 1:
        log.error("no version of %s could be served (tried %s)", name,
                  ", ".join(str(v) for v, _ in candidates))
    return None


def _log_loaded(model: LoadedModel, seconds: float) -> None:
    spec = model.spec
    verified = ("not verified (no fmnist.probe: exported before probes)"
                if spec.probe_max_abs_diff is None else
                f"probe max|Δ|={spec.probe_max_abs_diff:.3g} "
                f"(tolerance {probe_tolerance(spec.metadata):g})")
    if spec.variant:
        verified += (f" fp32_agreement={spec.fp32_agreement:.4f} speedup_vs_fp32="
                     + ("n/a" if spec.speedup_vs_fp32 is None else f"{spec.speedup_vs_fp32:.2f}x"))
    log.info("loaded model %s v%d provider=%s test_accuracy=%.4f input_side=%d %s file=%s "
             "(%.2fs with warm-up)", spec.name, spec.version, model.provider, spec.test_accuracy,
             spec.input_side, verified, spec.path, seconds)


def load_models(models_dir: str | Path, policy: ProviderPolicy,
                wanted: dict[str, set[int]] | None = None,
                runner_factory: RunnerFactory | None = None,
                refused: list[Refusal] | None = None) -> list[LoadedModel]:
    """Load, warm up and verify every picked model; skip (with one log line) those that cannot be
    served, appending each version found but not served to `refused` when it is given."""
    runner_factory = runner_factory or (lambda path, providers: OnnxRunner(path, providers))
    refused = [] if refused is None else refused
    found = scan(models_dir, refused)
    if not found:
        log.warning("no models found in %s (expected <name>/<version>/%s)", models_dir,
                    mc.MODEL_FILE)
    loaded = []
    for name, candidates in pick_versions(found, wanted):
        model = load_newest(name, candidates, policy, runner_factory, refused)
        if model is not None:
            loaded.append(model)
    if policy.device == "cuda" and not loaded:
        log.warning("--device cuda: no model was loaded, so no session could confirm that the CUDA "
                    "provider is active")
    return loaded
