"""The served models: what ListModels says, as --list and --json show it, and which model answers
when --model is not given.

The default is the model with the best accuracy the client can be sure of, not the best figure:
each model's test accuracy was measured on its own number of test images (the demo exports the
224-px models on fewer), and a figure from fewer images is less certain. Each model counts for
the lower end of the 95% Wilson score interval of its accuracy: the demo's densenet, 0.9030 on
1,000 images, counts for 0.8831; lenet_bn, 0.9028 on 10,000, for 0.8968, and is the default.
Ranking by test images first would prefer any model measured on more images however poor; the
bound weighs both. Models under model_contract.NEAR_CHANCE are marked as near chance.
"""

from __future__ import annotations

import math

import model_contract as mc
from fmnist.v1 import classifier_pb2 as pb

from client import ClientError


def list_models(stub, timeout: float) -> pb.ListModelsResponse:
    return stub.ListModels(pb.ListModelsRequest(), timeout=timeout)


def default_model(listing: pb.ListModelsResponse) -> str:
    """The served fp32 model with the highest accuracy_lower_bound (ties: the name first in
    order); precision variants only when no fp32 model is served."""
    if not listing.models:
        raise ClientError("the server serves no models (export some, then restart it)")
    fp32 = [m for m in listing.models if not m.variant] or list(listing.models)
    return min(fp32, key=lambda m: (-accuracy_lower_bound(m.test_accuracy, m.test_images),
                                    m.name, -m.version)).name


def accuracy_lower_bound(accuracy: float, images: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval (95% for z = 1.96) of an accuracy measured on
    `images` test images; 0 when the count is unknown."""
    if images <= 0:
        return 0.0
    spread = z * math.sqrt(accuracy * (1 - accuracy) / images + z * z / (4 * images * images))
    return (accuracy + z * z / (2 * images) - spread) / (1 + z * z / images)


def near_chance(model: pb.ModelInfo) -> bool:
    return model.test_accuracy < mc.NEAR_CHANCE


def answered_near_chance(listing: pb.ListModelsResponse, model: str,
                         version: int | None) -> bool | None:
    """Whether the served `model` at `version` is near chance; None when it is not listed."""
    found = [m for m in listing.models if m.name == model and m.version == version]
    return near_chance(found[0]) if found else None


def choose_model(listing: pb.ListModelsResponse, model: str | None, variant: str | None) -> str:
    """--model and --variant -> the name to ask for ("resnet18" + "int8" -> "resnet18:int8",
    docs/DESIGN.md "Precision variants"); no --model: default_model's architecture."""
    if model is None:
        model = default_model(listing)
        if variant:
            model = mc.split_name(model)[0]
    arch, named = mc.split_name(model)
    if variant and named and named != variant:
        raise ClientError(f"--model {model} is the {named} variant but --variant asks for "
                          f"{variant}: give one of them", exit_code=2)
    return mc.served_name(arch, variant or named)


def models_dict(listing: pb.ListModelsResponse) -> dict:
    """ListModels as `--list --json` prints it."""
    return {"models": [_model_dict(m) for m in listing.models],
            "default": default_model(listing) if listing.models else None,
            "refused": [{"name": r.name, "version": r.version, "reason": r.reason}
                        for r in listing.refused],
            "limits": {"max_images_per_request": listing.limits.max_images_per_request,
                       "max_image_pixels": listing.limits.max_image_pixels,
                       "max_message_bytes": listing.limits.max_message_bytes,
                       "max_request_pixels": listing.limits.max_request_pixels}}


def _model_dict(m: pb.ModelInfo) -> dict:
    return {"name": m.name, "version": m.version, "input_side": m.input_side,
            "test_accuracy": m.test_accuracy, "test_images": m.test_images,
            "provider": m.provider,
            "probe_max_abs_diff": (m.probe_max_abs_diff if m.HasField("probe_max_abs_diff")
                                   else None),
            "variant": m.variant or "fp32",
            "fp32_agreement": m.fp32_agreement if m.HasField("fp32_agreement") else None,
            "speedup_vs_fp32": m.speedup_vs_fp32 if m.HasField("speedup_vs_fp32") else None,
            "near_chance": near_chance(m), "labels": list(m.labels)}
