"""The served models: what ListModels says, as --list and --json show it, and which model answers
when --model is not given."""

from __future__ import annotations

import model_contract as mc
from fmnist.v1 import classifier_pb2 as pb

from client import ClientError


def list_models(stub, timeout: float) -> pb.ListModelsResponse:
    return stub.ListModels(pb.ListModelsRequest(), timeout=timeout)


def default_model(listing: pb.ListModelsResponse) -> str:
    """The served fp32 model with the highest test accuracy (ties: the name first in order);
    precision variants only when no fp32 model is served."""
    if not listing.models:
        raise ClientError("the server serves no models (export some, then restart it)")
    fp32 = [m for m in listing.models if not m.variant] or list(listing.models)
    return min(fp32, key=lambda m: (-m.test_accuracy, m.name, -m.version)).name


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
            "labels": list(m.labels)}
