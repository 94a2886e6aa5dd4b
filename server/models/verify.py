"""Checks a loaded model must pass on the provider it will be served with, before it is served.

- The probe: the exporter's own handful of test images with the probabilities it measured, run
  again here. A provider or a file that answers differently (a tampered file, a provider with
  other numerics) is refused rather than served wrong.
- A variant's speed against the fp32 model beside it, on this machine: a 2-core AVX2 CPU without
  VNNI runs INT8 slower than fp32, one with VNNI or AMX 2-3x faster; only a measurement here says
  which, and ListModels reports it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

import model_contract as mc
from server.errors import ModelLoadError
from server.models.runner import Runner

RunnerFactory = Callable[[Path, list], Runner]  # (model file, providers to ask for) -> runner


def verify_probe(runner: Runner, meta: mc.ModelMetadata,
                 tolerance: float | None = None) -> float | None:
    """Run the exporter's probe images on the provider this runner really uses and return the max
    |Δ probability| against the exporter's; ModelLoadError when it is over `tolerance` (default:
    the file's own, meta.probe_tolerance). None: the file has no probe."""
    if meta.probe is None:
        return None
    try:
        probe = mc.decode_probe(meta.probe)
    except ValueError as e:
        raise ModelLoadError(f"malformed probe: {e}") from None
    try:
        served = np.asarray(runner.run(probe.images).probabilities, np.float32)
        diff = float(np.max(np.abs(served - probe.probabilities)))
    except Exception as e:  # noqa: BLE001 - a model that cannot run its probe is unusable
        raise ModelLoadError(f"probe run failed: {type(e).__name__}: {e}") from None
    tolerance = meta.probe_tolerance if tolerance is None else tolerance
    if not diff <= tolerance:  # also NaN
        raise ModelLoadError(f"probe: on {runner.provider} its {len(probe.images)} images' "
                             f"probabilities differ from the exporter's by max |Δ| {diff:.3g}, "
                             f"over the tolerance {tolerance:g}; re-export the model, or "
                             f"serve it with another --device")
    return diff


def speedup_vs_fp32(runner: Runner, fp32_path: Path, providers: list,
                    runner_factory: RunnerFactory, batch: int = 32, seconds: float = 0.5
                    ) -> float | None:
    """A variant's batch-`batch` images/s over the fp32 model's beside it, both on this machine
    and provider. None when there is no fp32 file."""
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
