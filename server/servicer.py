"""fmnist.v1.Classifier over gRPC: translate protobuf <-> core calls, and map errors in one place."""

from __future__ import annotations

import functools
import logging

import grpc
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from server.core import ClassifyResult, Core, ImageData, Limits, ModelView
from server.errors import Cancelled, ServingError

log = logging.getLogger("server.servicer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name  # "fmnist.v1.Classifier"
_INVERSIONS = {pb.INVERSION_AUTO: "auto", pb.INVERSION_ALWAYS: "always", pb.INVERSION_NEVER: "never"}
_NO_DEADLINE = 1e8  # seconds; grpc reports "no deadline" as None or as a huge number


def map_errors(method):
    """Domain errors -> their status code; anything else -> INTERNAL with the traceback logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as e:
            (log.info if isinstance(e, Cancelled) else log.warning)(
                "%s from %s -> %s: %s", method.__name__, context.peer(), e.code, e,
                extra={"code": e.code})
            context.abort(grpc.StatusCode[e.code], str(e))
        except Exception:
            log.exception("%s from %s failed unexpectedly -> INTERNAL", method.__name__,
                          context.peer(), extra={"code": "INTERNAL"})
            context.abort(grpc.StatusCode.INTERNAL,
                          "internal server error (the server logged the details)")

    return wrapper


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, core: Core):
        self.core = core

    @map_errors
    def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        result = self.core.classify(request.model, request.version, images_from(request),
                                    request.top_k, inversion_from(request), GrpcCall(context))
        return classify_response(result)

    @map_errors
    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return list_models_response(self.core.list_models(), self.core.limits)


class GrpcCall:
    """Adapts grpc's ServicerContext to the core's CallContext."""

    def __init__(self, context):
        self._context = context

    def time_remaining(self) -> float | None:
        remaining = self._context.time_remaining()
        return None if remaining is None or remaining > _NO_DEADLINE else remaining

    def is_active(self) -> bool:
        return self._context.is_active()


# --- converters ----------------------------------------------------------------------------------

def images_from(request: pb.ClassifyRequest) -> list[ImageData]:
    out = []
    for image in request.images:
        kind = image.WhichOneof("data") or ""
        out.append(ImageData(kind, getattr(image, kind) if kind else b""))
    return out


def inversion_from(request: pb.ClassifyRequest) -> str:
    return _INVERSIONS.get(request.inversion, f"unknown enum value {request.inversion}")


def classify_response(result: ClassifyResult) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        model=result.model, version=result.version,
        classifications=[pb.Classification(predictions=[
            pb.Prediction(class_id=p.class_id, label=p.label, probability=p.probability)
            for p in predictions]) for predictions in result.classifications])


def list_models_response(models: list[ModelView], limits: Limits) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[pb.ModelInfo(name=m.name, version=m.version, input_side=m.input_side,
                             labels=list(m.labels), test_accuracy=m.test_accuracy,
                             provider=m.provider, test_images=m.test_images) for m in models],
        limits=pb.Limits(max_images_per_request=limits.max_images_per_request,
                         max_image_pixels=limits.max_image_pixels,
                         max_message_bytes=limits.max_message_bytes))
