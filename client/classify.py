"""Images -> Classify requests within the server's limits -> one answer per image.

Images go in consecutive batches of at most the server's images per request and about its
message size (ListModels' limits); a batch over its pixels per request is split in two until it
fits. An image the server refuses is left out with its reason and the rest sent again. A request
that fails otherwise (after client/retries.py's retries) ends the run, and the answers already
given are kept: the model unloaded or the server draining halfway through a folder costs the
rest of the folder, not what was classified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import grpc
from fmnist.v1 import classifier_pb2 as pb

from client.inputs import ImageFile, Unusable
from client.models import default_model, list_models

_MESSAGE_HEADROOM = 0.9  # of the server's max message bytes, for protobuf framing and the rest
_PER_IMAGE_OVERHEAD = 16  # bytes of protobuf framing per image, generously
# The server refuses one image of a request as "image <index>: <reason>" (server/errors.py
# InvalidImage, docs/serving.md "fmnist.v1"); any other INVALID_ARGUMENT is about the request as a
# whole.
_REFUSED_IMAGE = re.compile(r"image (\d+): (.+)", re.DOTALL)
_INVERSIONS = {"auto": pb.INVERSION_AUTO, "always": pb.INVERSION_ALWAYS,
               "never": pb.INVERSION_NEVER}


@dataclass
class Answer:
    """What a run got: the model and version that answered, one result per classified image
    (input order), the images left out with the reason, and the call that ended the run early
    (a grpc.RpcError), if one did."""

    model: str
    version: int | None
    results: list[dict] = field(default_factory=list)
    refused: list[Unusable] = field(default_factory=list)
    failure: grpc.RpcError | None = None

    def as_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "results": self.results,
                "errors": [u.as_dict() for u in self.refused]}


def classify(stub, images: list[ImageFile], *, model: str | None = None, version: int = 0,
             top_k: int = 1, invert: str = "auto", timeout: float = 30.0,
             listing: pb.ListModelsResponse | None = None) -> Answer:
    """Classify `images` in batches within the server's limits. An image the server refuses, or
    too large for one message, is left out with the reason; the others are classified until a
    request fails, which ends the run (`Answer.failure`) with the answers so far kept."""
    listing = listing or list_models(stub, timeout)
    limits = listing.limits
    max_bytes = limits.max_message_bytes or 4 * 1024 * 1024
    template = pb.ClassifyRequest(model=model or default_model(listing), version=version,
                                  top_k=top_k, inversion=_INVERSIONS[invert])
    images, too_large = fit_messages(images, max_bytes)
    answer = Answer(template.model, version or None, refused=too_large)
    answered = False
    for batch in batches(images, limits.max_images_per_request or 64, max_bytes):
        try:
            answers, model_version, refused = _classify_batch(stub, template, batch, timeout)
        except grpc.RpcError as e:
            answer.failure = e
            break
        answer.refused += refused
        if model_version and not answered:
            (answer.model, answer.version), answered = model_version, True
        answer.results += [_result(image, classification) for image, classification in answers]
    return answer


def _message_budget(max_bytes: int) -> int:
    return int(max_bytes * _MESSAGE_HEADROOM) - 1024


def fit_messages(images: list[ImageFile], max_bytes: int) -> tuple[list[ImageFile], list[Unusable]]:
    """The images that fit in one message of at most `max_bytes`, and those that do not."""
    budget = _message_budget(max_bytes)
    fitting = [i for i in images if len(i.data) + _PER_IMAGE_OVERHEAD <= budget]
    too_large = [Unusable(i.path, f"{len(i.data):,} bytes is over what the server accepts in one "
                          f"message ({max_bytes:,} bytes)")
                 for i in images if len(i.data) + _PER_IMAGE_OVERHEAD > budget]
    return fitting, too_large


def batches(images: list[ImageFile], max_images: int, max_bytes: int) -> Iterator[list[ImageFile]]:
    """Consecutive groups of at most `max_images` images and about `max_bytes` per message (each
    image fits alone: fit_messages)."""
    budget = _message_budget(max_bytes)
    batch: list[ImageFile] = []
    size = 0
    for image in images:
        cost = len(image.data) + _PER_IMAGE_OVERHEAD
        if batch and (len(batch) >= max_images or size + cost > budget):
            yield batch
            batch, size = [], 0
        batch.append(image)
        size += cost
    if batch:
        yield batch


def _classify_batch(stub, template: pb.ClassifyRequest, batch: list[ImageFile], timeout: float):
    """([(image, classification)], (model, version) or None, [images the server refused]).

    An image the server refuses ("image 3: not a PNG ...") is left out and the rest sent again,
    so one bad file costs one more call. A request refused as a whole (its images add up to more
    pixels than the server takes at once, which only decoding would tell) is sent as two halves;
    a request of one image refused as a whole is at fault itself, and that error is raised."""
    pending, refused = list(batch), []
    while pending:
        request = pb.ClassifyRequest()
        request.CopyFrom(template)
        request.images.extend(pb.Image(encoded=image.data) for image in pending)
        try:
            response = stub.Classify(request, timeout=timeout)
            return (list(zip(pending, response.classifications)),
                    (response.model, response.version), refused)
        except grpc.RpcError as e:
            index, reason = _refused_image(e, len(pending))
            if index is not None:
                refused.append(Unusable(pending.pop(index).path, reason))
            elif e.code() != grpc.StatusCode.INVALID_ARGUMENT or len(pending) == 1:
                raise
            else:
                half = len(pending) // 2
                (answers, first, left_out), (more, second, also_left_out) = (
                    _classify_batch(stub, template, part, timeout)
                    for part in (pending[:half], pending[half:]))
                return answers + more, first or second, refused + left_out + also_left_out
    return [], None, refused


def _refused_image(error: grpc.RpcError, count: int) -> tuple[int | None, str]:
    """(index, reason) when the server refused one image of a request of `count`; else
    (None, "")."""
    match = _REFUSED_IMAGE.fullmatch(error.details() or "")
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not match or int(match[1]) >= count:
        return None, ""
    return int(match[1]), match[2]


def _result(image: ImageFile, classification) -> dict:
    return {"file": str(image.path), "predictions": [
        {"rank": rank, "class_id": p.class_id, "label": p.label,
         "probability": round(p.probability, 6)}
        for rank, p in enumerate(classification.predictions, 1)]}
