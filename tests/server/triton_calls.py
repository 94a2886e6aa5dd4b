"""tritonclient calls, run in a worker process by tests/server/api/grpc/test_kserve.py; plain values in and out.

tritonclient ships its own generated `inference.*` messages and registers them in protobuf's
default descriptor pool, as the server's own stubs do (server/api/grpc/kserve.py): a process that imports both
fails with duplicate symbols. The test process serves (and so imports the server's), so
tritonclient is imported only here, inside the functions, which run in a spawned worker; they
return arrays, dicts and strings, never tritonclient's objects, and errors as ("CODE", message).
"""

from __future__ import annotations

import functools
import queue

import numpy as np


def call(url: str, method: str, args: tuple = (), kwargs: dict | None = None):
    """(True, client.<method>(*args, **kwargs)) or (False, (status code name, message)).
    Protobuf answers come back as JSON dicts: pass as_json=True."""
    from tritonclient.utils import InferenceServerException
    try:
        return True, getattr(_client(url), method)(*args, **(kwargs or {}))
    except InferenceServerException as e:
        return False, (str(e.status()).removeprefix("StatusCode."), e.message())


def infer(url: str, model: str, inputs: list[tuple[str, str, np.ndarray]],
          outputs: list[tuple[str, int]] | None = None, version: str = "",
          use_async: bool = False):
    """ModelInfer through `infer` (or `async_infer` and its callback): inputs are (name,
    datatype, array), outputs (name, class_count). Returns (True, {"model_name", "model_version",
    "outputs": {name: array}}) or (False, (code, message))."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException
    tensors = []
    for name, datatype, array in inputs:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    wanted = None if outputs is None else [triton.InferRequestedOutput(name, class_count=k)
                                            for name, k in outputs]
    try:
        if use_async:
            done = queue.Queue()
            _client(url).async_infer(model, tensors, lambda result, error: done.put(
                (result, error)), model_version=version, outputs=wanted)
            result, error = done.get(timeout=60)
            if error is not None:
                raise error
        else:
            result = _client(url).infer(model, tensors, model_version=version, outputs=wanted)
    except InferenceServerException as e:
        return False, (str(e.status()).removeprefix("StatusCode."), e.message())
    response = result.get_response()
    return True, {"model_name": response.model_name, "model_version": response.model_version,
                  "outputs": {o.name: result.as_numpy(o.name) for o in response.outputs}}


def infer_typed(url: str, model: str, images: np.ndarray) -> dict:
    """ModelInfer with the pixels in `contents.uint_contents` (tritonclient always sends raw
    bytes): the request built by hand from tritonclient's own messages, sent with its stub."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=images.shape)
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    with grpc.insecure_channel(url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request,
                                                                                 timeout=60)
    return {o.name: np.frombuffer(raw, "<f4").reshape(o.shape)
            for o, raw in zip(response.outputs, response.raw_output_contents)}


@functools.cache
def _client(url: str):
    import tritonclient.grpc as triton
    return triton.InferenceServerClient(url)
