"""The values the protocols convert to and from: what a request holds, what an answer holds, what
a served version looks like, the limits the dataplane enforces (`Limits`, defined with the rest
of admission in server/admission.py). Plain frozen dataclasses, so fmnist.v1, KServe v2 and HTTP
all speak to the dataplane in the same terms, and none of them sees a type from below it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import model_contract as mc
from model_contract import MAX_NAME_BYTES as MAX_MODEL_NAME_BYTES  # noqa: F401 - re-exported
from server.admission import Limits  # noqa: F401 - part of the dataplane's values
from server.batching.batcher import BatchPolicy
from server.errors import InvalidRequest, shorten
from server.models.spec import ModelSpec

MAX_TOP_K = 10


@dataclass(frozen=True)
class Batching:
    """The batching policy of every model, with per-model overrides (--batching NAME=...)."""

    default: BatchPolicy = BatchPolicy()
    per_model: dict[str, BatchPolicy] = field(default_factory=dict)

    def policy(self, name: str) -> BatchPolicy:
        return self.per_model.get(name, self.default)


@dataclass(frozen=True)
class ImageData:
    kind: str  # "encoded", "raw", or "" when the request set neither
    data: bytes


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    classifications: list[list[Prediction]]  # per image, top_k predictions, best first


@dataclass(frozen=True)
class ModelView:
    """A served version as the protocols see it: what its file says and what loading it measured,
    and the execution provider it really runs on."""

    name: str  # as served: the arch, or "<arch>:<variant>"
    version: int
    provider: str
    labels: tuple[str, ...]
    input_side: int
    test_accuracy: float
    test_images: int
    variant: str = ""
    arch: str = ""
    fp32_agreement: float | None = None
    probe_max_abs_diff: float | None = None  # None: no probe (served with --allow-unverified)
    speedup_vs_fp32: float | None = None

    @classmethod
    def of(cls, spec: ModelSpec, provider: str) -> ModelView:
        return cls(spec.name, spec.version, provider, spec.labels, spec.input_side,
                   spec.test_accuracy, spec.test_images, spec.variant, spec.arch,
                   spec.fp32_agreement, spec.probe_max_abs_diff, spec.speedup_vs_fp32)

    @property
    def verified(self) -> bool:
        return self.probe_max_abs_diff is not None


@dataclass(frozen=True)
class IndexEntry:
    """A model version of the repository, served or not: state READY or UNAVAILABLE, and why."""

    name: str
    version: int
    state: str
    reason: str = ""


@dataclass
class RequestEvent:
    """One request through the core, filled in as it goes and handed to `Core.observer` when it
    ends, however it ends (server/metrics.py counts and times them)."""

    protocol: str  # "fmnist.v1", "v2", "http"
    images: int
    model: str = ""  # the version that answered; "" and 0 when it failed before one was chosen
    version: int = 0
    code: str = "OK"  # the status code name (ServingError.code, or CANCELLED, INTERNAL)
    seconds: float = 0.0  # from entering the core to the answer or the error
    decode_seconds: float | None = None  # None: nothing was decoded
    trace: object = None  # its tracing.py request trace; None with tracing off


def top_k(rows: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k largest values, largest first; ties keep the lower index."""
    if k == 1:  # what most requests ask for: argmax is the first largest, without a sort
        return rows.argmax(axis=1)[:, None]
    return np.argsort(-rows, axis=1, kind="stable")[:, :k]


def version_of(text: str) -> int:
    """A v2 model version ("" or "3") as the core's (0: the newest)."""
    if text == "":
        return 0
    version = mc.parse_version(text)
    if version is None:
        raise InvalidRequest(f"model version must be \"\" (the newest) or a positive integer, got "
                             f"{shorten(text)}")
    return version
