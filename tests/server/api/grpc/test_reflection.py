"""Server reflection: a generic client with no generated stubs can discover and call Classify."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from tests.serving_fixtures import SAMPLES


def test_reflection_lists_the_services(channel):
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"fmnist.v1.Classifier", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_a_client_built_from_reflection_alone_can_classify(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("fmnist.v1.Classifier").methods_by_name["Classify"]
    Request = message_factory.GetMessageClass(method.input_type)
    Response = message_factory.GetMessageClass(method.output_type)
    classify = channel.unary_unary(f"/fmnist.v1.Classifier/{method.name}",
                                   request_serializer=Request.SerializeToString,
                                   response_deserializer=Response.FromString)
    request = Request(model="lenet", top_k=3)
    request.images.add().encoded = (SAMPLES / "sandal.png").read_bytes()
    response = classify(request, timeout=30)
    assert response.model == "lenet" and response.version == 1
    predictions = response.classifications[0].predictions
    assert len(predictions) == 3 and predictions[0].probability >= predictions[1].probability

    bad = Request(model="no-such-model")
    bad.images.add().raw = bytes(784)
    try:
        classify(bad, timeout=30)
        raise AssertionError("expected NOT_FOUND")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_v1_answers_as_v1alpha_does(channel):
    """grpcurl and current clients ask grpc.reflection.v1 first (its messages are v1alpha's,
    field for field, so v1alpha's classes read and write them here)."""
    from grpc_reflection.v1alpha import reflection_pb2 as messages

    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=messages.ServerReflectionRequest.SerializeToString,
        response_deserializer=messages.ServerReflectionResponse.FromString)
    listed, described = info(iter([
        messages.ServerReflectionRequest(list_services=""),
        messages.ServerReflectionRequest(file_containing_symbol="fmnist.v1.Classifier")]),
        timeout=30)
    names = {s.name for s in listed.list_services_response.service}
    assert {"fmnist.v1.Classifier", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto
