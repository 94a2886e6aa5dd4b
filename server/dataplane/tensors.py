"""The models as tensors, in the Open Inference Protocol's (KServe v2's) terms, for every protocol
that speaks them: KServe v2 over gRPC (server/api/grpc/kserve.py) and over HTTP, JSON or binary
(server/api/http/v2_tensors.py). Each adapter reads its wire format into these values and checks;
nothing here knows a wire format but KServe's raw one, which both protocols share.

A request carries one input: `image` UINT8 [N, 1, 28, 28] (the graph's own input) or
`image_bytes` BYTES [N] (or [N, 1]: encoded files, decoded as fmnist.v1 Classify decodes them).
The outputs are the graph's, `logits` and `probabilities` FP32 [N, 10]; one asked for with the
`classification` parameter (k, 1..10) comes back as Triton's "<value>:<index>:<label>" strings.

Count before you build: `check_input` judges what a request says of its input (name, datatype,
shape) against the limits before any of its data is read, and the readers (`pixels`,
`encoded_raw`) build no more than that shape holds; `check_output_count` bounds the outputs
before they are read, and each may be asked for once. So a message of millions of tiny
elements or repeated outputs costs a length check, not millions of Python objects. Every
message that quotes a request is cut short (`shorten`, `shape_text`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

import model_contract as mc
from server.dataplane.types import ImageData, Limits, top_k
from server.errors import InvalidRequest, shorten
from server.models.runner import RunOutput

IMAGE = mc.INPUT
IMAGE_BYTES = "image_bytes"
CLASSIFICATION = "classification"  # the output parameter of Triton's classification extension
# name -> (datatype, shape); -1 is the batch dimension
INPUTS = {IMAGE: ("UINT8", (-1, 1, mc.SIDE, mc.SIDE)), IMAGE_BYTES: ("BYTES", (-1,))}
OUTPUTS = {name: ("FP32", (-1, mc.NUM_CLASSES)) for name in mc.OUTPUTS}
TAKES = f"{IMAGE!r} (UINT8 [N, 1, {mc.SIDE}, {mc.SIDE}]) or {IMAGE_BYTES!r} (BYTES [N])"
_MAX_RANK = 8  # an `image` shape of more dimensions is not worth reading
_PIXELS = mc.SIDE * mc.SIDE

Images = Union[np.ndarray, list[ImageData]]


@dataclass(frozen=True)
class Output:
    """One output to answer with: the tensor itself, or its top `classes` as strings."""

    name: str
    classes: int = 0


@dataclass(frozen=True)
class TensorRequest:
    """An inference request in tensors. `parse` reads its input and outputs; the dataplane calls
    it once the model is found, so that an unknown model is the error a client sees first."""

    model: str
    version: int  # 0: the newest served
    parse: Callable[[], tuple[Images, tuple[Output, ...]]]
    id: str = ""
    deadline: float | None = None  # time.monotonic() seconds
    protocol: str = "v2"


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # "FP32", or "BYTES" for classification strings
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]  # float32 rows, or the strings row by row


@dataclass(frozen=True)
class TensorAnswer:
    model: str
    version: int
    id: str
    outputs: list[OutputTensor]


MAX_ID_CHARS = 256  # a request id is echoed in the answer: a label, not a payload


def check_id(request_id: str) -> str:
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"the request id is {len(request_id):,} characters, over the limit "
                             f"of {MAX_ID_CHARS}")
    return request_id


# --- the input ---------------------------------------------------------------------------------

def shape_text(shape: Sequence[int]) -> str:
    """A shape for a message: itself, or its rank when it is too long to quote."""
    if len(shape) > _MAX_RANK:
        return f"a shape of {len(shape):,} dimensions"
    return shorten(str([int(d) for d in shape]), 120).strip("'")


def check_input(name: str, datatype: str, shape: Sequence[int], limits: Limits) -> str:
    """What a request declares of its one input, judged before its data is read: a known
    name, its datatype, and a shape that holds at most `limits.max_images_per_request` images.
    Returns the phrase that names the input in later messages."""
    if name not in INPUTS:
        raise InvalidRequest(f"unknown input {shorten(name)}; the model takes {TAKES}")
    where = f"input {name!r}"
    expected, _ = INPUTS[name]
    if datatype != expected:
        raise InvalidRequest(f"{where}: datatype must be {expected}, got {shorten(datatype)}")
    if name == IMAGE:
        if len(shape) > _MAX_RANK or any(d < 0 for d in shape):
            raise InvalidRequest(f"{where}: shape must be [N, 1, {mc.SIDE}, {mc.SIDE}] with "
                                 f"N >= 1, got {shape_text(shape)}")
        images = math.prod(shape) / _PIXELS
    else:
        if not (len(shape) == 1 or list(shape[1:]) == [1]) or shape[0] < 1:  # [N, 1]: Triton's
            raise InvalidRequest(f"{where}: shape must be [N] (or [N, 1]) with N >= 1, got "
                                 f"{shape_text(shape)}")
        images = shape[0]
    if images > limits.max_images_per_request:
        raise InvalidRequest(f"{where}: shape {shape_text(shape)} holds more than "
                             f"{limits.max_images_per_request} images, the limit per request; "
                             "split them")
    return where


def pixels(values: bytes | memoryview | Sequence[int], shape: Sequence[int], where: str,
           source: str) -> np.ndarray:
    """An `image` tensor from raw bytes or from a flat sequence of integers, as many as the shape
    holds (counted before anything is built); the dataplane then checks that the shape is the
    model's. `source` names where the values came from, for messages."""
    expected, raw = math.prod(shape), isinstance(values, (bytes, bytearray, memoryview))
    if len(values) != expected:
        raise InvalidRequest(f"{where}: shape {shape_text(shape)} needs {expected} "
                             f"{'bytes of' if raw else 'values in'} {source}, got {len(values)}")
    if raw:
        return np.frombuffer(values, np.uint8).reshape(shape)
    array = np.asarray(values) if len(values) else np.zeros(0, np.uint8)
    if array.dtype.kind not in "iu":
        bad = next((v for v in values if type(v) is not int), array.dtype)
        raise InvalidRequest(f"{where}: UINT8 data must be integers 0..255, got "
                             f"{shorten(repr(bad))}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidRequest(f"{where}: UINT8 values must be integers 0..255, got "
                             f"{array.max() if array.max() > 255 else array.min()}")
    return array.astype(np.uint8).reshape(shape)


def encoded(items: Sequence[bytes], shape: Sequence[int], where: str) -> list[ImageData]:
    if len(items) != shape[0]:
        raise InvalidRequest(f"{where}: shape {shape_text(shape)} needs {shape[0]} elements, "
                             f"got {len(items)}")
    return [ImageData("encoded", bytes(item)) for item in items]


def encoded_raw(raw: bytes | memoryview, shape: Sequence[int], where: str) -> list[ImageData]:
    """KServe's raw BYTES (each element a 4-byte little-endian length, then its bytes), read
    only as far as the shape's count: one element more is an error, not a list to build."""
    items, at, view = [], 0, memoryview(raw)
    while at < len(view):
        if len(items) == shape[0]:
            raise InvalidRequest(f"{where}: shape {shape_text(shape)} needs {shape[0]} elements, "
                                 "got more")
        size = int.from_bytes(view[at:at + 4], "little")
        if at + 4 + size > len(view):
            raise InvalidRequest(f"{where}: the raw data ends inside element {len(items)} (each "
                                 "element is a 4-byte little-endian length, then its bytes)")
        items.append(view[at + 4:at + 4 + size])
        at += 4 + size
    return encoded(items, shape, where)


def pack(items: Sequence[bytes]) -> bytes:
    """KServe's raw BYTES: each element's 4-byte little-endian length, then the element."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


# --- the outputs -------------------------------------------------------------------------------

def check_output_count(count: int) -> None:
    """Before the outputs are read: no more than the model has (each may be asked for once)."""
    if count > len(OUTPUTS):
        raise InvalidRequest(f"{count:,} outputs requested; the model has {len(OUTPUTS)} "
                             f"({', '.join(map(repr, OUTPUTS))}), each asked for at most once")


def output(name: str, parameters: Mapping[str, object], seen: set[str]) -> Output:
    """One requested output, its parameters as Python values (an int for `classification`);
    `seen` holds the names read before it."""
    if name not in OUTPUTS:
        raise InvalidRequest(f"unknown output {shorten(name)}; the model has "
                             f"{', '.join(map(repr, OUTPUTS))}")
    where = f"output {name!r}"
    if name in seen:
        raise InvalidRequest(f"{where} is requested twice; ask for each output once")
    seen.add(name)
    unknown = sorted(set(parameters) - {CLASSIFICATION})
    if unknown:
        raise InvalidRequest(f"{where}: unknown parameter(s) "
                             f"{', '.join(shorten(k) for k in unknown[:5])}; only "
                             f"{CLASSIFICATION!r} is supported")
    classes = parameters.get(CLASSIFICATION, 0)
    if CLASSIFICATION in parameters and not (
            type(classes) is int and 1 <= classes <= mc.NUM_CLASSES):
        raise InvalidRequest(f"{where}: {CLASSIFICATION} must be an int64_param from 1 to "
                             f"{mc.NUM_CLASSES}, got {shorten(repr(classes))}")
    return Output(name, classes)


def every_output() -> tuple[Output, ...]:
    """What a request that names no output gets: both tensors."""
    return tuple(Output(name) for name in OUTPUTS)


# --- the answer --------------------------------------------------------------------------------

def answer_tensors(labels: Sequence[str], out: RunOutput, outputs: Sequence[Output]
                   ) -> list[OutputTensor]:
    tensors = []
    for o in outputs:
        values = getattr(out, o.name)  # RunOutput's fields are named as the graph's outputs
        if o.classes:
            tensors.append(OutputTensor(o.name, "BYTES", (len(values), o.classes),
                                        classify(values, labels, o.classes)))
        else:
            tensors.append(OutputTensor(o.name, OUTPUTS[o.name][0], values.shape,
                                        np.ascontiguousarray(values, "<f4")))
    return tensors


def classify(values: np.ndarray, labels: Sequence[str], k: int) -> list[bytes]:
    """Row by row, the top k as Triton writes them: "<value>:<index>:<label>" (value as C's %f),
    best first; ties keep the lower index first."""
    top = top_k(values, k)
    return [f"{row[c]:f}:{c}:{labels[c]}".encode() for row, order in zip(values, top)
            for c in order]
