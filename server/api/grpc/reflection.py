"""gRPC server reflection, in both versions clients ask for: grpc.reflection.v1 (grpcurl and
current clients try it first) and v1alpha (older ones).

grpcio-reflection implements only v1alpha; v1 is the same protocol under another package name,
with the same messages field for field, so the v1alpha servicer answers v1 calls too: the
request bytes are read as v1alpha messages and the answers sent as the bytes v1 expects.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, reflection.SERVICE_NAME)


def add_reflection(grpc_server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Reflection listing `service_names` and itself, on both versions' method names."""
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, grpc_server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),))
