"""KServe v2 inference over HTTP: JSON (and Triton's binary tensor data extension) <-> the
ModelInferRequest / ModelInferResponse messages of the gRPC API.

An HTTP request is translated into the very protobuf message a gRPC client would send, so that
server/api/kserve_tensors.py checks it and builds the answer exactly as for gRPC: the same
rules, the same error messages, the same probabilities. What is HTTP's own is handled here:

- the body is a JSON object, optionally followed by binary tensor data: the header
  `Inference-Header-Content-Length` gives the JSON's size, and each input with
  `parameters.binary_data_size` takes that many bytes of what follows, in input order
  (tritonclient.http sends tensors so by default);
- JSON `data` may be flat or nested (row-major); `image` as integers 0..255, `image_bytes` as
  base64 strings (JSON has no bytes; tritonclient sends BYTES as binary data anyway);
- an output is answered in binary when it asks (`parameters.binary_data: true`) or, when it says
  nothing, the request does (`parameters.binary_data_output: true`); else as JSON `data`:
  floats, or the classification extension's "<value>:<index>:<label>" strings;
- the request parameter `timeout` (microseconds, as tritonclient's `timeout=` sends it) is a
  deadline, as a gRPC deadline is. Other request and input parameters are ignored, as over gRPC.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

import numpy as np
from inference import grpc_service_pb2 as pb

from server.api import kserve_tensors
from server.api.http.jsonpb import set_parameter
from server.errors import InvalidRequest, shorten

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
_UINT32 = 2 ** 32
_INT64 = 2 ** 63


@dataclass
class InferCall:
    """One HTTP inference request: the gRPC message, and how to answer it."""

    request: pb.ModelInferRequest
    binary_default: bool = False  # the request's binary_data_output
    binary: dict[str, bool] = field(default_factory=dict)  # per output, when it said
    timeout: float | None = None  # seconds, from parameters.timeout

    def in_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def parse_infer(body: bytes, header_length: str | None, model: str, version: str) -> InferCall:
    """The request body (JSON, then binary data when `header_length` says where JSON ends)."""
    size = len(body) if header_length is None else _header_size(header_length, len(body))
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequest('the request body must be a JSON object with "inputs": a list of '
                             'tensors {"name", "datatype", "shape", "data"}')
    call = InferCall(pb.ModelInferRequest(model_name=model, model_version=version,
                                          id=_text(header.get("id", ""), "id")))
    _parameters(call, _object(header.get("parameters", {}), "parameters"))
    binary = memoryview(body)[size:]
    for i, tensor in enumerate(header["inputs"]):
        binary = _input(call.request, _object(tensor, f"inputs[{i}]"), i, binary)
    if len(binary):
        raise InvalidRequest(f"{len(binary)} bytes of binary data after the JSON are not claimed "
                             f"by any input's parameters.{BINARY_SIZE}")
    for i, output in enumerate(_list(header.get("outputs", []), "outputs")):
        _output(call, _object(output, f"outputs[{i}]"), i)
    return call


def _header_size(text: str, body_size: int) -> int:
    try:
        size = int(text)
    except ValueError:
        size = -1
    if not 0 <= size <= body_size:
        raise InvalidRequest(f"{HEADER_LENGTH} must be the size of the JSON at the body's start, "
                             f"0..{body_size}, got {shorten(text)}")
    return size


def _parameters(call: InferCall, parameters: dict) -> None:
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise InvalidRequest(f"parameters.binary_data_output must be true or false, got "
                             f"{shorten(json.dumps(binary))}")
    call.binary_default = binary
    timeout = parameters.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise InvalidRequest(f"parameters.timeout must be a positive integer of microseconds,"
                                 f" got {shorten(json.dumps(timeout))}")
        call.timeout = timeout / 1e6


def _input(request: pb.ModelInferRequest, tensor: dict, i: int,
           binary: memoryview) -> memoryview:
    """Add input `i` to the message; returns the binary data the inputs after it may take."""
    where = f"inputs[{i}]"
    name, datatype = _text(tensor.get("name"), f"{where}.name"), _text(
        tensor.get("datatype"), f"{where}.datatype")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and -_INT64 <= d < _INT64
                                              for d in shape):
        raise InvalidRequest(f"{where}.shape must be a list of integers, got "
                             f"{shorten(json.dumps(shape))}")
    added = request.inputs.add(name=name, datatype=datatype, shape=shape)
    size = _object(tensor.get("parameters", {}), f"{where}.parameters").get(BINARY_SIZE)
    if size is not None:
        if "data" in tensor:
            raise InvalidRequest(f"input {name!r}: send its data as JSON data or as binary data "
                                 f"(parameters.{BINARY_SIZE}), not both")
        if not _is_int(size) or not 0 <= size <= len(binary):
            raise InvalidRequest(f"input {name!r}: parameters.{BINARY_SIZE} is {size}, but "
                                 f"{len(binary)} bytes of binary data are left after the JSON")
        request.raw_input_contents.append(bytes(binary[:size]))
        return binary[size:]
    if kserve_tensors.INPUTS.get(name, (None,))[0] == datatype:  # else kserve_tensors says why
        _contents(added, name, tensor.get("data", []))
    return binary


def _contents(tensor, name: str, data) -> None:
    """JSON data into the tensor's typed contents, as a gRPC client would send it."""
    if tensor.datatype == "BYTES":
        values = _flat(data)
        tensor.contents.bytes_contents.extend(_base64(v, name, j) for j, v in enumerate(values))
        return
    tensor.contents.uint_contents.extend(_integers(data, name).tolist())


def _integers(data, name: str) -> np.ndarray:
    """Nested lists of integers (a row-major tensor) as one flat array, read by numpy: a Python
    loop over an image's 784 values cost 5 ms, more than the model."""
    try:
        values = np.asarray(data).ravel()
    except (ValueError, OverflowError):  # ragged lists, integers past 64 bits
        values = np.asarray([None])
    if values.size and not (values.dtype.kind in "iu" and values.min() >= 0
                            and values.max() < _UINT32):
        raise InvalidRequest(f"input {name!r}: UINT8 data must be integers 0..255 (a flat or "
                             f"nested list), got {shorten(json.dumps(data))}")
    return values


def _flat(data) -> list:
    """Nested lists as one flat list (BYTES: a few elements, each a string)."""
    if not isinstance(data, list):
        return [data]
    flat = []
    for item in data:
        flat.extend(_flat(item))
    return flat


def _base64(value, name: str, j: int) -> bytes:
    try:
        return base64.b64decode(value if isinstance(value, str) else b"*", validate=True)
    except (ValueError, binascii.Error):
        raise InvalidRequest(f"input {name!r}: element {j} is not a base64 string (JSON carries "
                             "BYTES as base64; or send them as binary data)") from None


def _output(call: InferCall, output: dict, i: int) -> None:
    name = _text(output.get("name"), f"outputs[{i}].name")
    added = call.request.outputs.add(name=name)
    for key, value in _object(output.get("parameters", {}), f"outputs[{i}].parameters").items():
        if key == "binary_data":
            if not isinstance(value, bool):
                raise InvalidRequest(f"output {name!r}: binary_data must be true or false")
            call.binary[name] = value
        elif not set_parameter(added.parameters[key], value):  # kserve_tensors judges the rest
            raise InvalidRequest(f"output {name!r}: parameter {shorten(key)} must be a boolean, "
                                 f"a number or a string, got {shorten(json.dumps(value))}")


def infer_body(response: pb.ModelInferResponse, call: InferCall) -> tuple[bytes, dict[str, str]]:
    """The answer: JSON, followed by the binary outputs when any is (with its header size)."""
    outputs, chunks = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if call.in_binary(tensor.name):
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            chunks.append(raw)
        elif tensor.datatype == "BYTES":  # the classification strings, as gRPC packs them
            items = kserve_tensors._unpack(raw, f"output {tensor.name!r}")
            entry["data"] = [item.decode() for item in items]
        else:
            entry["data"] = np.frombuffer(raw, "<f4").tolist()
        outputs.append(entry)
    answer = {"model_name": response.model_name, "model_version": response.model_version,
              "outputs": outputs}
    if response.id:
        answer["id"] = response.id
    header = json.dumps(answer).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(header))}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string, got {shorten(json.dumps(value))}")
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object, got {shorten(json.dumps(value))}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list, got {shorten(json.dumps(value))}")
    return value
