"""KServe v2 inference over HTTP: JSON (and Triton's binary tensor data extension) <-> the
dataplane's tensors (server/dataplane/tensors.py), straight from the parsed body to numpy.

What is HTTP's own is handled here:
- the body is a JSON object, optionally followed by binary tensor data: the header
  `Inference-Header-Content-Length` gives the JSON's size, and the input with
  `parameters.binary_data_size` takes that many bytes of what follows (tritonclient.http sends
  tensors so by default);
- JSON `data` is flat (row-major) or nested as its shape; `image` as integers 0..255,
  `image_bytes` as base64 strings (JSON has no bytes; tritonclient sends BYTES as binary data);
- an output is answered in binary when it asks (`parameters.binary_data: true`) or, when it says
  nothing, the request does (`parameters.binary_data_output: true`); else as JSON `data`:
  floats, or the classification extension's "<value>:<index>:<label>" strings;
- the request parameter `timeout` (microseconds, as tritonclient's `timeout=` sends it) is a
  deadline, as a gRPC deadline is. Other request and input parameters are ignored, as over gRPC.

Count before you build: the one input and the outputs are counted from their lists' lengths,
and a tensor's data is walked only once its declared shape is within the limits and only as far
as that shape goes, so a body of millions of tiny elements costs a length check. The JSON itself
is parsed off the event loop when the body is large (V2Routes).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field

import numpy as np

from model_contract import SIDE
from server.api.http.body import json_value
from server.dataplane import tensors
from server.dataplane.tensors import Images, Output, TensorAnswer
from server.dataplane.types import Limits
from server.errors import InvalidRequest, shorten

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
_DIGITS = frozenset("0123456789")
_PIXELS = SIDE * SIDE
_MORE_VALUES = 4096  # commas a request may hold beside its pixels: names, parameters, an id


@dataclass
class InferCall:
    """One HTTP inference request, its body parsed: what the dataplane reads once the model is
    found (`read`), and how to answer."""

    id: str
    input: dict
    binary: memoryview  # the input's binary data, when it is sent so
    outputs: list
    limits: Limits
    binary_default: bool = False  # the request's binary_data_output
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per output, when it said
    timeout: float | None = None  # seconds, from parameters.timeout

    def read(self) -> tuple[Images, tuple[Output, ...]]:
        return _images(self.input, self.binary, self.limits), self._outputs()

    def in_binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_default)

    def _outputs(self) -> tuple[Output, ...]:
        if not self.outputs:
            return tensors.every_output()
        seen: set[str] = set()
        return tuple(tensors.output(name, parameters, seen) for name, parameters in self.outputs)


def parse_infer(body: bytes, header_length: str | None, limits: Limits) -> InferCall:
    """The request body (JSON, then binary data when `header_length` says where JSON ends): its
    structure and counts; the tensors' data is read later, by `InferCall.read`."""
    size = len(body) if header_length is None else _header_size(header_length, len(body))
    text = body[:size]
    _check_value_count(text, limits)
    header = json_value(text)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequest('the request body must be a JSON object with "inputs": a list of '
                             'tensors {"name", "datatype", "shape", "data"}')
    inputs = header["inputs"]
    if len(inputs) != 1:
        names = ", ".join(shorten(_object(t, "an input").get("name")) for t in inputs[:4])
        raise InvalidRequest(f"send one input, {tensors.TAKES}; got {len(inputs):,}: {names}")
    outputs = _list(header.get("outputs", []), "outputs")
    tensors.check_output_count(len(outputs))
    call = InferCall(tensors.check_id(_text(header.get("id", ""), "id")),
                     _object(inputs[0], "inputs[0]"), memoryview(body)[size:], [], limits)
    _parameters(call, _object(header.get("parameters", {}), "parameters"))
    for i, output in enumerate(outputs):
        _output(call, _object(output, f"outputs[{i}]"), i)
    return call


def _check_value_count(text: bytes, limits: Limits) -> None:
    """Before the JSON is parsed: no more values than a request may carry. Parsing millions of
    tiny values (zeros, empty strings) is the slow case of any JSON parser, and it holds the GIL
    throughout; every value after an array's first follows a comma, which bytes.count finds at
    memory speed."""
    most = limits.max_images_per_request * _PIXELS + _MORE_VALUES
    commas = text.count(b",")
    if commas > most:
        raise InvalidRequest(f"the JSON holds over {commas:,} values; a request carries at most "
                             f"{most:,} (--max-images-per-request images of {_PIXELS} pixels, "
                             "and the rest of the request)")


def _header_size(text: str, body_size: int) -> int:
    size = int(text) if text and set(text) <= _DIGITS and len(text) <= 12 else -1
    if not 0 <= size <= body_size:
        raise InvalidRequest(f"{HEADER_LENGTH} must be the size of the JSON at the body's start, "
                             f"0..{body_size}, got {shorten(text)}")
    return size


def _parameters(call: InferCall, parameters: dict) -> None:
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise InvalidRequest(f"parameters.binary_data_output must be true or false, got "
                             f"{_quote(binary)}")
    call.binary_default = binary
    timeout = parameters.get("timeout")
    if timeout is not None:
        if not _is_int(timeout) or not 0 < timeout < 2 ** 63:
            raise InvalidRequest(f"parameters.timeout must be a positive integer of microseconds,"
                                 f" got {_quote(timeout)}")
        call.timeout = timeout / 1e6


def _output(call: InferCall, output: dict, i: int) -> None:
    """Note output `i`'s name and parameters (read with the input, once the model is found);
    `binary_data` is HTTP's own and says how to answer it."""
    name = _text(output.get("name"), f"outputs[{i}].name")
    parameters = dict(_object(output.get("parameters", {}), f"outputs[{i}].parameters"))
    if "binary_data" in parameters:
        binary = parameters.pop("binary_data")
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output {shorten(name)}: binary_data must be true or false")
        call.binary_outputs[name] = binary
    call.outputs.append((name, parameters))


# --- the input, once the model is found ---------------------------------------------------------

def _images(tensor: dict, binary: memoryview, limits: Limits) -> Images:
    name = _text(tensor.get("name"), "inputs[0].name")
    datatype = _text(tensor.get("datatype"), "inputs[0].datatype")
    shape = _shape(tensor.get("shape"))
    where = tensors.check_input(name, datatype, shape, limits)
    size = _object(tensor.get("parameters", {}), "inputs[0].parameters").get(BINARY_SIZE)
    if size is not None:
        if "data" in tensor:
            raise InvalidRequest(f"{where}: send its data as JSON data or as binary data "
                                 f"(parameters.{BINARY_SIZE}), not both")
        if not _is_int(size) or size != len(binary):
            raise InvalidRequest(f"{where}: parameters.{BINARY_SIZE} is {_quote(size)}, but "
                                 f"{len(binary)} bytes of binary data follow the JSON")
        if name == tensors.IMAGE:
            return tensors.pixels(binary, shape, where, "binary data")
        return tensors.encoded_raw(binary, shape, where)
    if len(binary):
        raise InvalidRequest(f"{len(binary)} bytes of binary data after the JSON are not claimed "
                             f"by the input's parameters.{BINARY_SIZE}")
    values = _flat(tensor.get("data", []), shape, where)
    if name == tensors.IMAGE:
        return tensors.pixels(values, shape, where, "its data")
    return tensors.encoded([_base64(v, where, j) for j, v in enumerate(values)], shape, where)


def _shape(shape) -> list[int]:
    if not isinstance(shape, list) or not all(_is_int(d) and -2 ** 63 <= d < 2 ** 63
                                              for d in shape):
        raise InvalidRequest(f"inputs[0].shape must be a list of integers, got {_quote(shape)}")
    return shape


def _flat(data, shape: list[int], where: str) -> list:
    """JSON data as one flat list: flat already (as many values as the shape holds) or nested as
    the shape is, level by level; each list's length is checked before it is walked, so the work
    is bounded by the shape, which check_input bounded by the limits."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidRequest(f"{where}: data must be a list, got {_quote(data)}")
    if not (data and isinstance(data[0], list)):
        return data  # flat: the reader counts it
    level = [data]
    for dim in shape:
        if not all(isinstance(item, list) and len(item) == dim for item in level):
            raise InvalidRequest(f"{where}: data must hold {count} values, flat or nested as its "
                                 f"shape {tensors.shape_text(shape)}")
        level = [value for item in level for value in item]
    return level


def _base64(value, where: str, j: int) -> bytes:
    try:
        return base64.b64decode(value if isinstance(value, str) else b"*", validate=True)
    except (ValueError, binascii.Error):
        raise InvalidRequest(f"{where}: element {j} is not a base64 string (JSON carries "
                             "BYTES as base64; or send them as binary data)") from None


# --- the answer ----------------------------------------------------------------------------------

def infer_body(answer: TensorAnswer, call: InferCall) -> tuple[bytes, dict[str, str]]:
    """The answer: JSON, followed by the binary outputs when any is (with its header size)."""
    outputs, chunks = [], []
    for tensor in answer.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if call.in_binary(tensor.name):
            raw = (tensors.pack(tensor.data) if tensor.datatype == "BYTES"
                   else tensor.data.tobytes())
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            chunks.append(raw)
        elif tensor.datatype == "BYTES":
            entry["data"] = [item.decode() for item in tensor.data]
        else:
            entry["data"] = np.ravel(tensor.data).tolist()
        outputs.append(entry)
    body = {"model_name": answer.model, "model_version": str(answer.version), "outputs": outputs}
    if answer.id:
        body["id"] = answer.id
    header = json.dumps(body).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(header))}


# --- JSON values ---------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quote(value) -> str:
    """A JSON value for a message: a scalar cut short, a list or an object by its size only
    (quoting one could mean quoting the whole request)."""
    if isinstance(value, list):
        return f"a list of {len(value):,} items"
    if isinstance(value, dict):
        return f"an object of {len(value):,} members"
    if isinstance(value, str):
        return shorten(value)
    text = json.dumps(value)
    return text if len(text) <= 64 else shorten(text)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string, got {_quote(value)}")
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object, got {_quote(value)}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list, got {_quote(value)}")
    return value
