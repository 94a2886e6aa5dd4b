"""KServe v2 tensors <-> what the dataplane takes and returns (server/api/kserve.py's ModelInfer).

The model contract (model_contract.py) seen as v2 tensors. A request carries one input:
`image` UINT8 [N, 1, 28, 28], the graph's own input, or `image_bytes` BYTES [N], encoded files
that the core decodes exactly as fmnist.v1 Classify does. The outputs are the graph's, `logits`
and `probabilities` FP32 [N, 10]; one asked for with the classification parameter comes back as
Triton's "<value>:<index>:<label>" strings instead. Every problem is an InvalidRequest that names
the tensor, so a client knows which of its tensors to fix.

Only the wire's own consistency is checked here (datatype, a shape whose elements the data
holds); whether the tensor is one the model takes is the dataplane's check, for every protocol.

Data travels as tritonclient sends it: in `raw_input_contents` (little-endian; each BYTES element
preceded by its 4-byte little-endian length) or in the typed `contents`; answers always go in
`raw_output_contents`, as Triton's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from inference import grpc_service_pb2 as pb

import model_contract as mc
from server.dataplane.core import top_k
from server.dataplane.types import ImageData
from server.errors import InvalidRequest, shorten
from server.models.runner import RunOutput
from server.models.spec import ModelSpec

IMAGE_BYTES = "image_bytes"
CLASSIFICATION = "classification"  # the output parameter of Triton's classification extension
# name -> (datatype, shape); -1 is the batch dimension
INPUTS = {mc.INPUT: ("UINT8", (-1, 1, mc.SIDE, mc.SIDE)), IMAGE_BYTES: ("BYTES", (-1,))}
OUTPUTS = {name: ("FP32", (-1, mc.NUM_CLASSES)) for name in mc.OUTPUTS}
_TAKES = f"{mc.INPUT!r} (UINT8 [N, 1, {mc.SIDE}, {mc.SIDE}]) or {IMAGE_BYTES!r} (BYTES [N])"


@dataclass(frozen=True)
class Wanted:
    """One output to answer with: the tensor itself, or its top `classes` as strings."""

    name: str
    classes: int = 0


def images_of(request: pb.ModelInferRequest) -> np.ndarray | list[ImageData]:
    """The request's one input as Core.infer takes it: the uint8 tensor, or encoded images."""
    if len(request.inputs) != 1:
        raise InvalidRequest(f"send one input, {_TAKES}; got {len(request.inputs)}: "
                             f"{_names(request.inputs)}")
    if request.raw_input_contents and len(request.raw_input_contents) != 1:
        raise InvalidRequest(f"{len(request.raw_input_contents)} raw_input_contents for 1 input; "
                             "send one per input")
    tensor = request.inputs[0]
    if tensor.name not in INPUTS:
        raise InvalidRequest(f"unknown input {_names(request.inputs)}; the model takes {_TAKES}")
    where = f"input {tensor.name!r}"
    datatype, _ = INPUTS[tensor.name]
    if tensor.datatype != datatype:
        raise InvalidRequest(f"{where}: datatype must be {datatype}, got {shorten(tensor.datatype)}")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if raw is not None and tensor.HasField("contents"):
        raise InvalidRequest(f"{where}: send its data in raw_input_contents or in contents, "
                             "not both")
    if tensor.name == mc.INPUT:
        return _pixels(tensor, raw, where)
    return [ImageData("encoded", data) for data in _encoded(tensor, raw, where)]


def _names(tensors) -> str:
    return ", ".join(shorten(t.name) for t in tensors)


def _pixels(tensor, raw: bytes | None, where: str) -> np.ndarray:
    """The tensor as its shape says; the dataplane checks that the shape is the model's."""
    shape = list(tensor.shape)
    if any(d < 0 for d in shape) or len(shape) > 8:
        raise InvalidRequest(f"{where}: shape must be [N, 1, {mc.SIDE}, {mc.SIDE}] with N >= 1, "
                             f"got {shape}")
    expected = math.prod(shape)
    if raw is not None:
        if len(raw) != expected:
            raise InvalidRequest(f"{where}: shape {shape} needs {expected} bytes of "
                                 f"raw_input_contents, got {len(raw)}")
        return np.frombuffer(raw, np.uint8).reshape(shape)
    values = np.asarray(tensor.contents.uint_contents, np.uint32)
    if len(values) != expected:
        raise InvalidRequest(f"{where}: shape {shape} needs {expected} values in "
                             f"contents.uint_contents (or raw_input_contents), got {len(values)}")
    if len(values) and values.max() > 255:
        raise InvalidRequest(f"{where}: UINT8 values must be 0..255, got {values.max()}")
    return values.astype(np.uint8).reshape(shape)


def _encoded(tensor, raw: bytes | None, where: str) -> list[bytes]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or shape[1:] == [1]) or shape[0] < 1:  # [N, 1]: Triton's reshape
        raise InvalidRequest(f"{where}: shape must be [N] (or [N, 1]) with N >= 1, got {shape}")
    items = _unpack(raw, where) if raw is not None else list(tensor.contents.bytes_contents)
    if len(items) != shape[0]:
        raise InvalidRequest(f"{where}: shape {shape} needs {shape[0]} elements, got {len(items)}")
    return items


def _unpack(raw: bytes, where: str) -> list[bytes]:
    """Triton's raw BYTES: each element is a 4-byte little-endian length, then that many bytes."""
    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        if at + 4 > len(raw) or at + 4 + size > len(raw):
            raise InvalidRequest(f"{where}: raw_input_contents ends inside element {len(items)} "
                                 "(each element is a 4-byte little-endian length, then its bytes)")
        items.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return items


def wanted_of(request: pb.ModelInferRequest) -> list[Wanted]:
    """The outputs asked for, in order; both tensors when none is."""
    if not request.outputs:
        return [Wanted(name) for name in OUTPUTS]
    wanted = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {shorten(output.name)}; the model has "
                                 f"{', '.join(map(repr, OUTPUTS))}")
        where = f"output {output.name!r}"
        unknown = sorted(set(output.parameters) - {CLASSIFICATION})
        if unknown:
            raise InvalidRequest(f"{where}: unknown parameter(s) {', '.join(map(shorten, unknown))};"
                                 f" only {CLASSIFICATION!r} is supported")
        classes = 0
        if CLASSIFICATION in output.parameters:
            parameter = output.parameters[CLASSIFICATION]
            classes = parameter.int64_param
            if parameter.WhichOneof("parameter_choice") != "int64_param" or not (
                    1 <= classes <= mc.NUM_CLASSES):
                raise InvalidRequest(f"{where}: {CLASSIFICATION} must be an int64_param from 1 to "
                                     f"{mc.NUM_CLASSES}, got {shorten(str(parameter).strip())}")
        wanted.append(Wanted(output.name, classes))
    return wanted


def infer_response(request_id: str, spec: ModelSpec, out: RunOutput,
                   wanted: list[Wanted]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=spec.name, model_version=str(spec.version),
                                     id=request_id)
    for w in wanted:
        values = getattr(out, w.name)  # RunOutput's fields are named as the graph's outputs
        if w.classes:
            response.outputs.add(name=w.name, datatype="BYTES", shape=[len(values), w.classes])
            response.raw_output_contents.append(_pack(classify(values, spec.labels, w.classes)))
        else:
            response.outputs.add(name=w.name, datatype=OUTPUTS[w.name][0], shape=values.shape)
            response.raw_output_contents.append(np.ascontiguousarray(values, "<f4").tobytes())
    return response


def classify(values: np.ndarray, labels: tuple[str, ...], k: int) -> list[bytes]:
    """Row by row, the top k as Triton writes them: "<value>:<index>:<label>" (value as C's %f),
    best first; ties keep the lower index first."""
    top = top_k(values, k)
    return [f"{row[c]:f}:{c}:{labels[c]}".encode() for row, order in zip(values, top)
            for c in order]


def _pack(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)
