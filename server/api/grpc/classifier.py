"""fmnist.v1.Classifier over gRPC (asyncio): protobuf <-> the dataplane's calls and values; errors
are mapped by status.py, as for every gRPC API."""

from __future__ import annotations

from fmnist.v1 import classifier_pb2 as pb

from server.api.grpc.status import deadline_of, map_errors
from server.dataplane.core import Core
from server.dataplane.types import ClassifyResult, ImageData, IndexEntry, Limits, ModelView

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name  # "fmnist.v1.Classifier"
_INVERSIONS = {pb.INVERSION_AUTO: "auto", pb.INVERSION_ALWAYS: "always", pb.INVERSION_NEVER: "never"}


class ClassifierServicer:
    """The methods of fmnist.v1.Classifier; transport.py registers them."""

    def __init__(self, core: Core):
        self.core = core

    @map_errors
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        self.core.check_image_count(len(request.images))  # before a value is made per image
        result = await self.core.classify(request.model, request.version, images_from(request),
                                          request.top_k, inversion_from(request),
                                          deadline_of(context))
        return classify_response(result)

    @map_errors
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return list_models_response(self.core.list_models(), self.core.limits,
                                    self.core.refused())


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
    """Built in place (add()), not from lists of messages that the constructors would copy."""
    response = pb.ClassifyResponse(model=result.model, version=result.version)
    for predictions in result.classifications:
        add = response.classifications.add().predictions.add
        for p in predictions:
            add(class_id=p.class_id, label=p.label, probability=p.probability)
    return response


def list_models_response(models: list[ModelView], limits: Limits,
                         refused: list[IndexEntry] = ()) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[model_info(m) for m in models],
        refused=[pb.RefusedModel(name=r.name, version=r.version, reason=r.reason[:1000])
                 for r in refused],
        limits=pb.Limits(max_images_per_request=limits.max_images_per_request,
                         max_image_pixels=limits.max_image_pixels,
                         max_message_bytes=limits.max_message_bytes,
                         max_request_pixels=limits.max_request_pixels))


def model_info(m: ModelView) -> pb.ModelInfo:
    return pb.ModelInfo(name=m.name, version=m.version, input_side=m.input_side,
                        labels=list(m.labels), test_accuracy=m.test_accuracy, provider=m.provider,
                        test_images=m.test_images, probe_max_abs_diff=m.probe_max_abs_diff,
                        variant=m.variant, fp32_agreement=m.fp32_agreement,
                        speedup_vs_fp32=m.speedup_vs_fp32)
