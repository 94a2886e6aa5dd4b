"""KServe v2 (the Open Inference Protocol) over gRPC: inference.GRPCInferenceService on the core.

So that clients written for KServe or Triton (tritonclient, perf tools) can use our models with
no code of ours: the same core, batchers and limits as fmnist.v1, on the same port. Tensors are
translated by server/api/kserve_tensors.py; errors are mapped by server/api/status.py exactly as
for fmnist.v1.
Triton extensions offered: classification, model_configuration, statistics, and model_repository
when a `Repository` is given (RepositoryIndex answers without one: served and refused versions).

A model version is a string here: "" is the newest served, anything else a positive integer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from inference import grpc_service_pb2 as pb
from inference import model_config_pb2 as mc_pb

import server
from server.api import kserve_tensors
from server.api.status import deadline_of, map_errors
from server.batching.batcher import BatchStats
from server.dataplane import tensors
from server.dataplane.core import Core
from server.dataplane.tensors import TensorRequest, check_id
from server.dataplane.types import version_of
from server.errors import InvalidRequest, ModelNotFound, Unimplemented, shorten

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "fmnist-serve"
PLATFORM = "onnxruntime_onnx"  # Triton's name for what the models are
_DATA_TYPES = {"UINT8": mc_pb.TYPE_UINT8, "FP32": mc_pb.TYPE_FP32, "BYTES": mc_pb.TYPE_STRING}
_NS = 1e9
_UNLOAD_DEPENDENTS = "unload_dependents"  # tritonclient always sends it; no model here has any


class Repository(Protocol):
    """What RepositoryModelLoad/Unload need from the live model repository (server/models/repository.py's
    Repository; None when the server was given its models, not a folder). Both may block while
    versions load, warm up or drain, so they are called on a worker thread; failures are
    server.errors exceptions (ModelNotFound, ...), mapped like any other."""

    def load(self, name: str) -> None:
        """Load (or reload) the newest loadable version of `name` from the models folder."""

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` (requests in flight finish)."""


class V2Servicer:
    """The methods of inference.GRPCInferenceService; server/api/transport.py registers them."""

    def __init__(self, core: Core, repository: Repository | None = None):
        self.core = core
        self.repository = repository

    @map_errors
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @map_errors
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.core.draining)

    @map_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        version = version_of(request.version)
        try:
            self.core.lookup(request.name, version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self.core.draining)

    @map_errors
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        extensions = ["classification", "model_configuration", "statistics"]
        if self.repository is not None:  # the extension is index, load and unload
            extensions.append("model_repository")
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server.__version__,
                                         extensions=extensions)

    @map_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context) -> pb.ModelMetadataResponse:
        spec = self.core.lookup(request.name, version_of(request.version)).spec
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=spec.name, versions=[str(v) for v in self._versions(spec.name)], platform=PLATFORM,
            inputs=[tensor(name=n, datatype=d, shape=s) for n, (d, s) in tensors.INPUTS.items()],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, (d, s) in tensors.OUTPUTS.items()])

    @map_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        answer = await self.core.infer_tensors(TensorRequest(
            request.model_name, version_of(request.model_version),
            lambda: kserve_tensors.parse(request, self.core.limits), check_id(request.id),
            deadline_of(context), "v2"))
        return kserve_tensors.response(answer)

    @map_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._config(request.name,
                                                          version_of(request.version)))

    @map_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context) -> pb.ModelStatisticsResponse:
        if request.name:
            versions = ([self.core.lookup(request.name, version_of(request.version)).version]
                        if request.version else self._versions(request.name))
            served = [(request.name, v) for v in versions]
        elif request.version:
            raise InvalidRequest("a version needs a model name; send neither for every model")
        else:
            served = sorted((m.name, m.version) for m in self.core.list_models())
        return pb.ModelStatisticsResponse(model_stats=[
            statistics(name, version, self.core.stats(name, version))
            for name, version in served])

    @map_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = [(m.name, m.version, "READY", "") for m in self.core.list_models()]
        if not request.ready:
            models += [(r.name, r.version, "UNAVAILABLE", r.reason) for r in self.core.refused]
        return pb.RepositoryIndexResponse(models=[
            index(name=name, version=str(version), state=state, reason=reason)
            for name, version, state, reason in sorted(models)])

    @map_errors
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context) -> pb.RepositoryModelLoadResponse:
        await self._repository_call("load", request)
        return pb.RepositoryModelLoadResponse()

    @map_errors
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context) -> pb.RepositoryModelUnloadResponse:
        await self._repository_call("unload", request)
        return pb.RepositoryModelUnloadResponse()

    # --- helpers ----------------------------------------------------------------------------

    def _versions(self, name: str) -> list[int]:
        """The served versions of `name`, oldest first; ModelNotFound when there is none."""
        self.core.lookup(name, 0)
        return self.core.versions(name)

    def _config(self, name: str, version: int) -> mc_pb.ModelConfig:
        view, policy = self.core.config(name, version)
        return mc_pb.ModelConfig(
            name=view.name, platform=PLATFORM, backend="onnxruntime",
            max_batch_size=policy.max_batch,
            input=[model_input(name, datatype, shape)
                   for name, (datatype, shape) in tensors.INPUTS.items()],
            output=[mc_pb.ModelOutput(name=name, data_type=_DATA_TYPES[datatype], dims=shape[1:])
                    for name, (datatype, shape) in tensors.OUTPUTS.items()],
            dynamic_batching=mc_pb.ModelDynamicBatching(
                max_queue_delay_microseconds=round(policy.max_delay * 1e6)))

    async def _repository_call(self, action: str, request) -> None:
        if self.repository is None:
            raise Unimplemented(f"Repository{action.capitalize()} is not available: this server "
                                f"has no model repository to {action} from")
        unsupported = sorted(set(request.parameters) - {_UNLOAD_DEPENDENTS})
        if unsupported:
            raise InvalidRequest(f"parameters are not supported by {action}: "
                                 f"{', '.join(map(shorten, unsupported))}")
        await asyncio.to_thread(getattr(self.repository, action), request.model_name)


def model_input(name: str, datatype: str, shape: tuple[int, ...]) -> mc_pb.ModelInput:
    """Triton's declaration of a batched input: dims without the batch dimension; a tensor that
    is only the batch dimension ([N]) is declared [1] and reshaped to [] (as Triton does)."""
    dims = shape[1:]
    return mc_pb.ModelInput(
        name=name, data_type=_DATA_TYPES[datatype], dims=dims or [1],
        format=mc_pb.ModelInput.FORMAT_NCHW if len(dims) == 3 else mc_pb.ModelInput.FORMAT_NONE,
        reshape=None if dims else mc_pb.ModelTensorReshape())


def statistics(name: str, version: int, stats: BatchStats) -> pb.ModelStatistics:
    """One version's cumulative batcher figures in Triton's terms (docs/DESIGN.md)."""
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=name, version=str(version), last_inference=round(stats.last_batch_at * 1000),
        inference_count=stats.images, execution_count=stats.batches,
        inference_stats=pb.InferStatistics(
            queue=duration(count=stats.pieces, ns=round(stats.queue_seconds * _NS)),
            compute_infer=duration(count=stats.batches, ns=round(stats.compute_seconds * _NS))),
        batch_stats=[pb.InferBatchStatistics(batch_size=size, compute_infer=duration(
            count=batches, ns=round(seconds * _NS)))
            for size, (batches, seconds) in sorted(stats.by_size.items())])
