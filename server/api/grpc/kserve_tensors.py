"""KServe v2 tensors over gRPC <-> the dataplane's (server/dataplane/tensors.py): a
ModelInferRequest's one input and its outputs, read as tritonclient sends them, and the answer in
`raw_output_contents`, as Triton's are.

Data travels in `raw_input_contents` (little-endian; each BYTES element preceded by its 4-byte
little-endian length) or in the typed `contents`. What the request declares (its input's name,
datatype and shape, how many outputs) is checked before its data is read: the message is already
parsed (grpc's deserialiser, in C), but no Python object is made per element of it.
"""

from __future__ import annotations

from inference import grpc_service_pb2 as pb

from server.dataplane import tensors
from server.dataplane.tensors import Images, Output, TensorAnswer
from server.dataplane.types import Limits
from server.errors import InvalidRequest, shorten


def parse(request: pb.ModelInferRequest, limits: Limits) -> tuple[Images, tuple[Output, ...]]:
    """The request's input as the dataplane takes it and the outputs it asks for."""
    return _input(request, limits), _outputs(request.outputs)


def _input(request: pb.ModelInferRequest, limits: Limits) -> Images:
    if len(request.inputs) != 1:
        raise InvalidRequest(f"send one input, {tensors.TAKES}; got {len(request.inputs):,}: "
                             f"{_names(request.inputs)}")
    if len(request.raw_input_contents) > 1:
        raise InvalidRequest(f"{len(request.raw_input_contents):,} raw_input_contents for 1 "
                             "input; send one per input")
    tensor = request.inputs[0]
    shape = tensor.shape
    where = tensors.check_input(tensor.name, tensor.datatype, shape, limits)
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if raw is not None and tensor.HasField("contents"):
        raise InvalidRequest(f"{where}: send its data in raw_input_contents or in contents, "
                             "not both")
    if tensor.name == tensors.IMAGE:
        if raw is not None:
            return tensors.pixels(raw, shape, where, "raw_input_contents")
        return tensors.pixels(tensor.contents.uint_contents, shape, where,
                              "contents.uint_contents (or raw_input_contents)")
    if raw is not None:
        return tensors.encoded_raw(raw, shape, where)
    return tensors.encoded(tensor.contents.bytes_contents, shape, where)


def _names(inputs) -> str:
    return ", ".join(shorten(t.name) for t in inputs[:4]) + (", ..." if len(inputs) > 4 else "")


def _outputs(requested) -> tuple[Output, ...]:
    if not requested:
        return tensors.every_output()
    tensors.check_output_count(len(requested))
    seen: set[str] = set()
    return tuple(tensors.output(o.name, {k: _value(v) for k, v in o.parameters.items()}, seen)
                 for o in requested)


def _value(parameter: pb.InferParameter):
    """An InferParameter as the Python value it holds (None when empty)."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def response(answer: TensorAnswer) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=answer.model, model_version=str(answer.version),
                                    id=answer.id)
    for tensor in answer.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(
            tensors.pack(tensor.data) if tensor.datatype == "BYTES" else tensor.data.tobytes())
    return message
