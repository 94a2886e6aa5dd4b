"""What the server knows of one servable model version, all of it read from the file's metadata.

The values are parsed and bounded by `model_contract.ModelMetadata.from_props` (one parser for
the exporter, the server, the report and the benchmarks), so that nothing read from a file can
break ListModels for everyone; here they are only matched against where the file was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import model_contract as mc
from server.errors import ModelLoadError


@dataclass(frozen=True)
class ModelSpec:
    """One servable model version: where it is, its metadata, and what loading it measured."""

    name: str  # as served: the arch, or "<arch>:<variant>"
    version: int
    path: Path
    meta: mc.ModelMetadata = field(compare=False, repr=False)
    # max |Δ probability| of the probe run on the serving provider against the exporter's run;
    # None: the file has no probe and was served with --allow-unverified
    probe_max_abs_diff: float | None = None
    # what the probe was held to on that provider: the file's tolerance, or wider for an fp32
    # model on CUDA with TF32 (execution_providers.py); None: not checked
    probe_tolerance: float | None = None
    # a variant's batch-32 images/s over its fp32 model's, measured here at load on the same
    # provider; None: not measured (fp32 itself, or no fp32 file beside it)
    speedup_vs_fp32: float | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    @property
    def input_side(self) -> int:
        return self.meta.input_side

    @property
    def test_accuracy(self) -> float:
        return self.meta.test_accuracy

    @property
    def test_images(self) -> int:
        return self.meta.test_images

    @property
    def variant(self) -> str:
        return self.meta.variant or ""

    @property
    def fp32_agreement(self) -> float | None:
        return self.meta.fp32_agreement

    @property
    def verified(self) -> bool:
        return self.probe_max_abs_diff is not None


@dataclass(frozen=True)
class Refusal:
    """A model version that was found but not served, and why (for logs and ListModels)."""

    name: str
    version: int
    reason: str


def parse_metadata(name: str, version: int, path: Path, props: dict[str, str]) -> ModelSpec:
    """The spec of the file at `path`, found as `name` v`version`; ModelLoadError names what is
    wrong (a bad value, or an arch or variant that is not the one its folder and file say)."""
    try:
        meta = mc.ModelMetadata.from_props(props)
    except mc.MetadataError as e:
        raise ModelLoadError(str(e)) from None
    arch, variant = mc.split_name(name)
    if meta.arch != arch:
        raise ModelLoadError(f"metadata {mc.ARCH}={meta.arch[:100]!r} does not match its folder "
                             f"name {arch!r}")
    if meta.variant != variant:
        raise ModelLoadError(f"metadata {mc.VARIANT}={(meta.variant or '(none)')[:20]!r} does not "
                             f"match its file {path.name!r}")
    return ModelSpec(name=name, version=version, path=path, meta=meta)
