"""Loading model versions: session, provider check, metadata, warm-up, probe, in that order.

A file that fails any step is one log line and a `Refusal`, and is skipped; the server still
serves the rest. Only a failure that makes the whole server wrong as asked (--device cuda without
CUDA) is a StartupError.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import model_contract as mc
from server.errors import ModelLoadError
from server.models.providers import ProviderPolicy
from server.models.runner import OnnxRunner, Runner
from server.models.scan import pick_versions, scan
from server.models.spec import ModelSpec, Refusal, parse_metadata
from server.models.verify import RunnerFactory, speedup_vs_fp32, verify_probe

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    runner: Runner
    # seconds of each step of loading it: "session", "warm-up", "probe" (where start-up goes)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.runner.provider


def default_runner_factory(path: Path, providers: list) -> Runner:
    return OnnxRunner(path, providers)


@dataclass(frozen=True)
class Loader:
    """How model files become served versions on this server: which providers, which runtime,
    and whether a file without a probe may be served (unverified) or is refused."""

    policy: ProviderPolicy
    runner_factory: RunnerFactory = default_runner_factory
    allow_unverified: bool = False

    def load_one(self, name: str, version: int, path: Path) -> LoadedModel:
        """Create the session, check the provider and the metadata, warm it up, run the probe.
        Raises ModelLoadError (skip this version) or StartupError (--device cuda without CUDA)."""
        marks = [time.perf_counter()]
        runner = self.runner_factory(path, self.policy.requested())
        marks.append(time.perf_counter())
        try:
            self.policy.check([runner.provider], f"{name} v{version}")
            spec = parse_metadata(name, version, path, runner.metadata)
            try:
                runner.warmup()
            except Exception as e:  # noqa: BLE001 - a model that cannot run one zero batch is unusable
                raise ModelLoadError(f"warm-up run failed: {type(e).__name__}: {e}") from None
            marks.append(time.perf_counter())
            tolerance = self.policy.probe_tolerance(spec.meta, runner.provider)
            spec = replace(spec, probe_max_abs_diff=verify_probe(runner, spec.meta, tolerance),
                           probe_tolerance=tolerance)
            marks.append(time.perf_counter())
            if not spec.verified and not self.allow_unverified:
                raise ModelLoadError(
                    f"no {mc.PROBE} in the file, so the server cannot check that it answers as "
                    "exported; re-export it (`make export`), or serve it anyway with "
                    "--allow-unverified")
            if spec.variant:
                spec = replace(spec, speedup_vs_fp32=_variant_speedup(spec, runner, self))
        except BaseException:
            runner.close()
            raise
        steps = (b - a for a, b in zip(marks, marks[1:]))
        phases = dict(zip(("session", "warm-up", "probe"), steps))
        return LoadedModel(spec=spec, runner=runner, phases=phases)

    def load_newest(self, name: str, candidates: list[tuple[int, Path]],
                    refused: list[Refusal]) -> LoadedModel | None:
        """The first of `candidates` (newest first) that loads; each one refused is logged and
        appended to `refused`. None when none loads."""
        for version, path in candidates:
            started = time.perf_counter()
            try:
                model = self.load_one(name, version, path)
            except ModelLoadError as e:
                log.error("skipping model %s v%d (%s): %s", name, version, path, e)
                refused.append(Refusal(name, version, str(e)))
                continue
            log_loaded(model, time.perf_counter() - started)
            if version != candidates[0][0]:
                log.warning("serving %s v%d instead of v%d: the newer version(s) cannot be "
                            "served (reasons above)", name, version, candidates[0][0])
            return model
        if len(candidates) > 1:
            log.error("no version of %s could be served (tried %s)", name,
                      ", ".join(str(v) for v, _ in candidates))
        return None

    def load_all(self, models_dir: str | Path, wanted: dict[str, set[int]] | None = None,
                 refused: list[Refusal] | None = None) -> list[LoadedModel]:
        """Load, warm up and verify every picked model; skip (with one log line) those that
        cannot be served, appending each version found but not served to `refused`."""
        refused = [] if refused is None else refused
        found = scan(models_dir, refused)
        if not found:
            log.warning("no models found in %s (expected <name>/<version>/%s)", models_dir,
                        mc.MODEL_FILE)
        loaded = [m for name, candidates in pick_versions(found, wanted)
                  if (m := self.load_newest(name, candidates, refused)) is not None]
        if self.policy.device == "cuda" and not loaded:
            log.warning("--device cuda: no model was loaded, so no session could confirm that "
                        "the CUDA provider is active")
        return loaded


def _variant_speedup(spec: ModelSpec, runner: Runner, loader: Loader) -> float | None:
    try:
        ratio = speedup_vs_fp32(runner, spec.path.parent / mc.MODEL_FILE,
                                loader.policy.requested(), loader.runner_factory)
    except Exception as e:  # noqa: BLE001 - a broken fp32 file beside it is its own refusal
        log.warning("%s v%d: speed against fp32 not measured: %s: %s", spec.name, spec.version,
                    type(e).__name__, e)
        return None
    if ratio is not None and ratio < 1:
        log.warning("%s v%d is slower than its fp32 model on this machine (%s): %.2fx at "
                    "batch 32; ListModels says so", spec.name, spec.version, runner.provider, ratio)
    return ratio


def log_loaded(model: LoadedModel, seconds: float) -> None:
    spec = model.spec
    verified = ("NOT verified (no fmnist.probe; served because of --allow-unverified)"
                if spec.probe_max_abs_diff is None else
                f"probe max|Δ|={spec.probe_max_abs_diff:.3g} "
                f"(tolerance {spec.probe_tolerance or spec.meta.probe_tolerance:g})")
    if spec.variant:
        verified += (f" fp32_agreement={spec.fp32_agreement:.4f} speedup_vs_fp32="
                     + ("n/a" if spec.speedup_vs_fp32 is None else f"{spec.speedup_vs_fp32:.2f}x"))
    phases = ", ".join(f"{name} {s:.2f}" for name, s in model.phases.items())
    log.info("loaded model %s v%d provider=%s %s test_accuracy=%.4f input_side=%d %s file=%s "
             "(%.2fs with warm-up: %s)", spec.name, spec.version, model.provider,
             model.runner.settings, spec.test_accuracy, spec.input_side, verified, spec.path,
             seconds, phases)


def load_models(models_dir: str | Path, policy: ProviderPolicy,
                wanted: dict[str, set[int]] | None = None,
                runner_factory: RunnerFactory | None = None,
                refused: list[Refusal] | None = None) -> list[LoadedModel]:
    """`Loader(...).load_all(...)` for a one-off load (benchmarks, tests)."""
    return Loader(policy, runner_factory or default_runner_factory).load_all(models_dir, wanted,
                                                                             refused)
