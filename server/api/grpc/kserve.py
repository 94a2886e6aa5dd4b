"""KServe v2 (the Open Inference Protocol) over gRPC: inference.GRPCInferenceService, translated to
and from the dataplane's calls and values.

So that clients written for KServe or Triton (tritonclient, perf tools) can use our models with
no code of ours: the same dataplane as fmnist.v1, on the same port. Tensors are translated by
kserve_tensors.py; errors are mapped by status.py exactly as for fmnist.v1. Triton extensions
offered: classification, model_configuration, statistics, and model_repository when the server
follows a models folder (RepositoryIndex answers without one: served and refused versions).

A model version is a string here: "" is the newest served, anything else a positive integer.
"""

from __future__ import annotations

from inference import grpc_service_pb2 as pb
from inference import model_config_pb2 as mc_pb

from server.api.grpc import kserve_tensors
from server.api.grpc.status import deadline_of, map_errors
from server.dataplane import views
from server.dataplane.access import bearer_token
from server.dataplane.core import Core
from server.dataplane.tensors import TensorRequest, check_id
from server.dataplane.types import version_of
from server.errors import ModelNotFound

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_DATA_TYPES = {"UINT8": mc_pb.TYPE_UINT8, "FP32": mc_pb.TYPE_FP32, "BYTES": mc_pb.TYPE_STRING}


class V2Servicer:
    """The methods of inference.GRPCInferenceService; transport.py registers them."""

    def __init__(self, core: Core):
        self.core = core

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
        info = self.core.server_info()
        return pb.ServerMetadataResponse(name=info.name, version=info.version,
                                         extensions=info.extensions)

    @map_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context) -> pb.ModelMetadataResponse:
        meta = self.core.model_metadata(request.name, version_of(request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=[str(v) for v in meta.versions], platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in meta.outputs])

    @map_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        answer = await self.core.infer_tensors(TensorRequest(
            request.model_name, version_of(request.model_version),
            lambda: kserve_tensors.parse(request, self.core.limits), check_id(request.id),
            deadline_of(context), "v2"))
        return kserve_tensors.response(answer)

    @map_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=model_config(self.core.model_config(
            request.name, version_of(request.version))))

    @map_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context) -> pb.ModelStatisticsResponse:
        version = version_of(request.version) if request.version else None
        return pb.ModelStatisticsResponse(model_stats=[
            statistics(s) for s in self.core.statistics(request.name, version)])

    @map_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            index(name=e.name, version=str(e.version), state=e.state, reason=e.reason)
            for e in self.core.index(request.ready)])

    @map_errors
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context) -> pb.RepositoryModelLoadResponse:
        await self.core.load(request.model_name, list(request.parameters),
                             *_caller(context))
        return pb.RepositoryModelLoadResponse()

    @map_errors
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context) -> pb.RepositoryModelUnloadResponse:
        await self.core.unload(request.model_name, list(request.parameters),
                               *_caller(context))
        return pb.RepositoryModelUnloadResponse()


def _caller(context) -> tuple[bytes | None, str]:
    """The call's bearer token (for the access policy) and its peer's address (for the log)."""
    return bearer_token(context.invocation_metadata()), context.peer()


def model_config(config: views.ModelConfig) -> mc_pb.ModelConfig:
    return mc_pb.ModelConfig(
        name=config.name, platform=config.platform, backend=config.backend,
        max_batch_size=config.max_batch_size, input=[model_input(t) for t in config.inputs],
        output=[mc_pb.ModelOutput(name=t.name, data_type=_DATA_TYPES[t.datatype],
                                  dims=t.shape[1:]) for t in config.outputs],
        dynamic_batching=mc_pb.ModelDynamicBatching(
            max_queue_delay_microseconds=config.max_queue_delay_microseconds))


def model_input(tensor: views.TensorInfo) -> mc_pb.ModelInput:
    """Triton's declaration of a batched input: dims without the batch dimension; a tensor that
    is only the batch dimension ([N]) is declared [1] and reshaped to [] (as Triton does)."""
    dims = tensor.shape[1:]
    return mc_pb.ModelInput(
        name=tensor.name, data_type=_DATA_TYPES[tensor.datatype], dims=dims or [1],
        format=mc_pb.ModelInput.FORMAT_NCHW if len(dims) == 3 else mc_pb.ModelInput.FORMAT_NONE,
        reshape=None if dims else mc_pb.ModelTensorReshape())


def statistics(s: views.VersionStatistics) -> pb.ModelStatistics:
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=s.name, version=str(s.version), last_inference=s.last_inference_ms,
        inference_count=s.inference_count, execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            queue=duration(count=s.queue_count, ns=s.queue_ns),
            compute_infer=duration(count=s.compute_count, ns=s.compute_ns)),
        batch_stats=[pb.InferBatchStatistics(batch_size=b.size, compute_infer=duration(
            count=b.count, ns=b.nanoseconds)) for b in s.by_size])
