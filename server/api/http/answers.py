"""The JSON bodies of the HTTP API, made from the dataplane's values: fmnist.v1's ListModels and
Classify as the /v1 routes answer them, and KServe v2's metadata, model config, statistics and
repository index as Triton's HTTP API writes them (field names as in the protobuf messages of the
gRPC API, 64-bit integers as numbers, not strings as protobuf's own JSON mapping has them), so
the two protocols say the same things and clients of either read them.
"""

from __future__ import annotations

from server.dataplane import views
from server.dataplane.types import ClassifyResult, IndexEntry, Limits, ModelView

_DATA_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def list_models(models: list[ModelView], limits: Limits, refused: list[IndexEntry]) -> dict:
    return {"models": [_model(m) for m in models],
            "limits": {"max_images_per_request": limits.max_images_per_request,
                       "max_image_pixels": limits.max_image_pixels,
                       "max_message_bytes": limits.max_message_bytes,
                       "max_request_pixels": limits.max_request_pixels},
            "refused": [{"name": r.name, "version": r.version, "reason": r.reason[:1000]}
                        for r in refused]}


def _model(m: ModelView) -> dict:
    """A served version as ListModels has it; the optional figures only where measured."""
    out = {"name": m.name, "version": m.version, "input_side": m.input_side,
           "labels": list(m.labels), "test_accuracy": m.test_accuracy, "provider": m.provider,
           "test_images": m.test_images, "variant": m.variant}
    optional = {"probe_max_abs_diff": m.probe_max_abs_diff, "fp32_agreement": m.fp32_agreement,
                "speedup_vs_fp32": m.speedup_vs_fp32}
    out.update({key: value for key, value in optional.items() if value is not None})
    return out


def classify(result: ClassifyResult) -> dict:
    return {"model": result.model, "version": result.version, "classifications": [
        {"predictions": [{"class_id": p.class_id, "label": p.label, "probability": p.probability}
                         for p in predictions]} for predictions in result.classifications]}


def server_metadata(info: views.ServerInfo) -> dict:
    return {"name": info.name, "version": info.version, "extensions": list(info.extensions)}


def model_metadata(meta: views.ModelMetadata) -> dict:
    return {"name": meta.name, "versions": [str(v) for v in meta.versions],
            "platform": meta.platform,
            "inputs": [_tensor(t) for t in meta.inputs],
            "outputs": [_tensor(t) for t in meta.outputs]}


def _tensor(t: views.TensorInfo) -> dict:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def model_config(config: views.ModelConfig) -> dict:
    """Triton's model configuration: batched tensors declared without their batch dimension, a
    tensor that is only the batch dimension as [1] reshaped to []."""
    inputs = []
    for t in config.inputs:
        dims = list(t.shape[1:])
        entry = {"name": t.name, "data_type": _DATA_TYPES[t.datatype],
                 "format": "FORMAT_NCHW" if len(dims) == 3 else "FORMAT_NONE",
                 "dims": dims or [1]}
        if not dims:
            entry["reshape"] = {"shape": []}
        inputs.append(entry)
    return {"name": config.name, "platform": config.platform, "backend": config.backend,
            "max_batch_size": config.max_batch_size, "input": inputs,
            "output": [{"name": t.name, "data_type": _DATA_TYPES[t.datatype],
                        "dims": list(t.shape[1:])} for t in config.outputs],
            "dynamic_batching": {
                "max_queue_delay_microseconds": config.max_queue_delay_microseconds}}


def statistics(stats: list[views.VersionStatistics]) -> dict:
    return {"model_stats": [{
        "name": s.name, "version": str(s.version), "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {"queue": {"count": s.queue_count, "ns": s.queue_ns},
                            "compute_infer": {"count": s.compute_count, "ns": s.compute_ns}},
        "batch_stats": [{"batch_size": b.size,
                         "compute_infer": {"count": b.count, "ns": b.nanoseconds}}
                        for b in s.by_size]} for s in stats]}


def index(entries: list[IndexEntry]) -> list[dict]:
    return [{"name": e.name, "version": str(e.version), "state": e.state, "reason": e.reason}
            for e in entries]
