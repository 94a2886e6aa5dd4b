"""Protobuf messages as the JSON that Triton's HTTP API answers with, and JSON values as protobuf
parameters.

The HTTP routes answer with the very messages the gRPC servicers build (server/api/kserve.py,
server/api/classifier.py), so both protocols say the same things. protobuf's own json_format is
not used: its canonical mapping writes 64-bit integers as strings ("version": "3", "shape":
["-1", "10"]), where Triton's and KServe's HTTP JSON, and the clients reading it, have numbers.
"""

from __future__ import annotations

import base64

from google.protobuf.descriptor import FieldDescriptor


def message_dict(message) -> dict:
    """Every field by its proto name, defaults included (as Triton prints a model config);
    unset optional fields and message fields left out; enums by name, bytes as base64."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        out[field.name] = _field(field, getattr(message, field.name))
    return out


def _field(field: FieldDescriptor, value):
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {key: _single(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_single(field, item) for item in value]
    return _single(field, value)


def _single(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def set_parameter(parameter, value) -> bool:
    """Put a JSON value into an InferParameter or ModelRepositoryParameter by its JSON type
    (true -> bool_param, 3 -> int64_param, "x" -> string_param, 0.5 -> double_param, where the
    message has it). False when the value has no such field (null, a list, an object)."""
    kinds = ((bool, "bool_param"), (int, "int64_param"), (str, "string_param"),
             (float, "double_param"))
    for kind, name in kinds:
        if isinstance(value, kind) and name in parameter.DESCRIPTOR.fields_by_name:
            if kind is int and not -2 ** 63 <= value < 2 ** 63:
                return False
            setattr(parameter, name, value)
            return True
    return False
