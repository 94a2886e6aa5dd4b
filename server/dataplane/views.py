"""What the dataplane tells about the server and its models, as plain values for every protocol:
the server's name, version and extensions, a model's tensors (KServe v2 metadata), its serving
configuration (Triton's model config, in neutral terms) and its statistics. The gRPC adapter
turns them into protobuf messages, the HTTP adapter into JSON; neither reaches past them into a
batcher or a runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.batching.batcher import BatchPolicy, BatchStats
from server.dataplane import tensors
from server.dataplane.types import ModelView

PLATFORM = "onnxruntime_onnx"  # Triton's name for what the models are
BACKEND = "onnxruntime"


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # "UINT8", "BYTES", "FP32"
    shape: tuple[int, ...]  # -1: the batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[int, ...]  # served, oldest first
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_queue_delay_microseconds: int


@dataclass(frozen=True)
class BatchFigures:
    size: int
    count: int
    nanoseconds: int


@dataclass(frozen=True)
class VersionStatistics:
    """One served version's cumulative figures in Triton's terms: images, batches, request
    pieces queued and their wait, batch runs by size (docs/DESIGN.md)."""

    name: str
    version: int
    last_inference_ms: int  # since the epoch; 0: none yet
    inference_count: int  # images
    execution_count: int  # batches
    queue_count: int  # request pieces
    queue_ns: int
    compute_count: int
    compute_ns: int
    by_size: tuple[BatchFigures, ...]


def _infos(table: dict) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(name, datatype, shape) for name, (datatype, shape) in table.items())


INPUTS = _infos(tensors.INPUTS)
OUTPUTS = _infos(tensors.OUTPUTS)


def metadata(view: ModelView, versions: list[int]) -> ModelMetadata:
    return ModelMetadata(view.name, tuple(versions), PLATFORM, INPUTS, OUTPUTS)


def config(view: ModelView, policy: BatchPolicy) -> ModelConfig:
    return ModelConfig(view.name, PLATFORM, BACKEND, policy.max_batch, INPUTS, OUTPUTS,
                       round(policy.max_delay * 1e6))


def statistics(name: str, version: int, stats: BatchStats) -> VersionStatistics:
    ns = lambda seconds: round(seconds * 1e9)  # noqa: E731
    return VersionStatistics(
        name, version, round(stats.last_batch_at * 1000), stats.images, stats.batches,
        stats.pieces, ns(stats.queue_seconds), stats.batches, ns(stats.compute_seconds),
        tuple(BatchFigures(size, batches, ns(seconds))
              for size, (batches, seconds) in sorted(stats.by_size.items())))
