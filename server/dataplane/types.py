"""The values the protocols convert to and from: what a request holds, what an answer holds, the
limits the dataplane enforces. Plain frozen dataclasses, so fmnist.v1, KServe v2 and HTTP all
speak to the dataplane in the same terms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import model_contract as mc
from model_contract import MAX_NAME_BYTES as MAX_MODEL_NAME_BYTES  # noqa: F401 - re-exported
from server.batching.batcher import BatchPolicy
from server.dataplane import decode
from server.errors import InvalidRequest, shorten
from server.models.spec import ModelSpec

MAX_TOP_K = 10


@dataclass(frozen=True)
class Limits:
    """What the server enforces (ListModels tells clients, so they can size their batches)."""

    max_images_per_request: int = 64
    max_image_pixels: int = decode.DEFAULT_MAX_PIXELS
    max_request_pixels: int = 4 * decode.DEFAULT_MAX_PIXELS  # all encoded images of one request
    max_decoding_pixels: int = 2 * decode.DEFAULT_MAX_PIXELS  # being decoded at once, server-wide
    max_message_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 512  # Classify requests being worked on at once; beyond: RESOURCE_EXHAUSTED
    decode_threads: int = 0  # 0: one per core


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
    """A served version as the protocols see it: its spec and the provider it really runs on."""

    spec: ModelSpec
    provider: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version


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
