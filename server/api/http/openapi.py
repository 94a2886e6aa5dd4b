"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json (built here, from the
same tensor names, limits and routes the server uses, so it cannot describe another server)."""

from __future__ import annotations

import server
from server.dataplane import tensors as kserve_tensors
from server.api.http.deadlines import TIMEOUT_HEADER
from server.api.http.v2_tensors import HEADER_LENGTH
from server.dataplane import imagefile
from server.dataplane.types import MAX_TOP_K

_JSON = "application/json"
_REF = "#/components/schemas/"
_ERRORS = {"400": "a bad request (the message says what to fix)",
           "401": "no valid `Authorization: Bearer <token>` (with --auth-token-file)",
           "404": "the model or version is not served (the message lists what is)",
           "408": "the body did not arrive within --request-read-timeout",
           "413": "the body is over --max-message-bytes",
           "429": "overloaded: retry after Retry-After seconds",
           "503": "shutting down or not ready: retry elsewhere",
           "504": "the deadline (X-Request-Timeout, or the v2 timeout parameter) passed"}


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _answer(description: str, schema: dict | None = None) -> dict:
    answers = {"200": {"description": description}}
    if schema is not None:
        answers["200"]["content"] = {_JSON: {"schema": schema}}
    answers.update({code: {"description": text, "content": {_JSON: {"schema": _ref("Error")}}}
                    for code, text in _ERRORS.items()})
    return answers


def _params(path: str) -> list[dict]:
    names = [part[1:-1].split(":")[0] for part in path.replace(":classify", "").split("/")
             if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"},
             "description": "a served version, a positive integer" if n == "version" else
             "a served model, e.g. lenet_bn"} for n in names] + [
        {"name": TIMEOUT_HEADER, "in": "header", "required": False,
         "schema": {"type": "number"}, "description": "seconds the caller waits (a deadline)"}]


def _operation(path: str, summary: str, answer: dict, body: dict | None = None,
               query: list[dict] = ()) -> dict:
    operation = {"summary": summary, "parameters": _params(path) + list(query),
                 "responses": answer}
    if body is not None:
        operation["requestBody"] = {"required": False, "content": body}
    return operation


def _v2_paths() -> dict:
    paths = {"/v2": {"get": _operation("/v2", "Server metadata", _answer(
                 "name, version, extensions", _ref("ServerMetadata")))},
             "/v2/health/live": {"get": _operation("", "Liveness", _answer("alive"))},
             "/v2/health/ready": {"get": _operation("", "Readiness: serving a model, not "
                                                    "draining", _answer("ready"))},
             "/v2/models/stats": {"get": _operation("", "Statistics of every served version",
                                                    _answer("Triton's statistics"))},
             "/v2/repository/index": {"post": _operation("", "Served and refused versions",
                                                         _answer("a list of versions"))}}
    for action in ("load", "unload"):
        path = f"/v2/repository/models/{{model}}/{action}"
        paths[path] = {"post": _operation(path, f"{action.capitalize()} a model (the live "
                                          "repository; 501 without a models folder)",
                                          _answer("done"))}
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        infer_body = {_JSON: {"schema": _ref("InferRequest")}, "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": f"JSON, then binary tensor data; {HEADER_LENGTH} gives the JSON's "
                           "size (Triton's binary tensor data extension)"}}
        paths.update({
            base: {"get": _operation(base, "Model metadata", _answer("tensors"))},
            base + "/ready": {"get": _operation(base, "Model readiness", _answer("served"))},
            base + "/config": {"get": _operation(base, "Triton's model configuration",
                                                 _answer("the configuration"))},
            base + "/stats": {"get": _operation(base, "Statistics", _answer("statistics"))},
            base + "/infer": {"post": _operation(base, "Inference (KServe v2)", _answer(
                "the outputs", _ref("InferResponse")), infer_body)}})
    return paths


def _v1_paths() -> dict:
    query = [{"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                         "maximum": MAX_TOP_K, "default": 1}},
             {"name": "inversion", "in": "query", "schema": {"enum": list(imagefile.INVERSIONS),
                                                             "default": "auto"}}]
    form = {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "image files, any field name: " + ", ".join(imagefile.FORMATS)},
        "top_k": {"type": "integer"}, "inversion": {"enum": list(imagefile.INVERSIONS)}}}
    body = {"multipart/form-data": {"schema": form},
            "image/*": {"schema": {"type": "string", "format": "binary"}}}
    paths = {"/v1/models": {"get": _operation("", "Served models (fmnist.v1 ListModels)",
                                              _answer("models, refused versions, limits"))}}
    for path in ("/v1/models/{model}:classify", "/v1/models/{model}/versions/{version}:classify"):
        paths[path] = {"post": _operation(path, "Classify images (fmnist.v1 Classify)", _answer(
            "per image, the top classes", _ref("ClassifyResponse")), body, query)}
    return paths


def _schemas() -> dict:
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"enum": list(kserve_tensors.INPUTS)}, "datatype": {"enum": ["UINT8", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "description": "image: integers 0..255 (flat or nested); "
                                                 "image_bytes: base64 strings"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {
            "type": "integer"}}}}}
    output = {"type": "object", "properties": {"name": {"enum": list(kserve_tensors.OUTPUTS)},
                                               "parameters": {"type": "object", "properties": {
                                                   "classification": {"type": "integer"},
                                                   "binary_data": {"type": "boolean"}}}}}
    prediction = {"type": "object", "properties": {"class_id": {"type": "integer"},
                                                   "label": {"type": "string"},
                                                   "probability": {"type": "number"}}}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": output},
            "parameters": {"type": "object", "properties": {
                "timeout": {"type": "integer", "description": "microseconds"},
                "binary_data_output": {"type": "boolean"}}}}},
        "InferResponse": {"type": "object", "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "id": {"type": "string"}, "outputs": {"type": "array", "items": {"type": "object"}}}},
        "ClassifyResponse": {"type": "object", "properties": {
            "model": {"type": "string"}, "version": {"type": "integer"},
            "classifications": {"type": "array", "items": {"type": "object", "properties": {
                "predictions": {"type": "array", "items": prediction}}}}}}}


def describe() -> dict:
    return {"openapi": "3.1.0",
            "info": {"title": "fmnist-serve", "version": server.__version__,
                     "description": "Fashion-MNIST classifiers: KServe v2 REST (as Triton speaks "
                                    "it) and a friendly classify endpoint. Errors are "
                                    '{"error": "<message>"}.'},
            "paths": {**_v2_paths(), **_v1_paths()},
            "components": {"schemas": _schemas(),
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
