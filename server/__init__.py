"""fmnist-serve's server: exported ONNX models behind fmnist.v1.Classifier and KServe v2, over gRPC
and HTTP.

Layers, each importing only those below it (tests/server/test_layers.py keeps it so):

- bootstrap: ``cli`` (flags, logging, signals; ``python -m server --help``), ``app``
  (``create_server``: binds, loads, wires the layers, health and reflection), ``metrics``
  (Prometheus /metrics from the dataplane's and batchers' events), ``workers/`` (--workers: N
  server processes on one port behind a parent: ``cores`` (usable cores, thread counts),
  ``ports`` (the held port), ``supervisor`` (start, watch, recycle, stop), ``worker``, ``summing``
  (one /metrics adding up every worker's));
- ``api/``: the wire protocols and nothing else; the only layer that imports grpc:
  ``classifier`` (fmnist.v1), ``kserve`` and ``kserve_tensors`` (KServe v2 / Triton),
  ``status`` (domain errors -> status codes, deadlines), ``transport`` (options, the handler
  that bounds reading a request), ``binding`` (every address of --host bound, or no start),
  ``reflection`` (v1 and v1alpha), ``security`` (TLS, token files), ``auth`` (the token check);
  ``http/`` (aiohttp on the same loop and core: ``v2`` and ``tensors`` KServe v2 REST,
  ``classify`` the friendly JSON API, ``openapi``, ``body`` and ``deadlines`` the limits,
  ``auth``, ``errors``, ``jsonpb``, ``listener`` the port, ``service`` the routes and the page);
- ``dataplane/``: protocol-neutral serving: ``core`` (admission, limits, deadlines, draining,
  top-k: what every protocol calls), ``types`` (the values protocols convert to and from),
  ``decode`` (image bytes -> 28x28, pure), ``decoding`` (a request's images under the pixel
  budgets), ``budget`` (the server-wide pixel budget);
- ``batching/``: ``batcher`` (dynamic batching around one runner), ``cost_model`` (batch run times
  learned by size, for admission);
- ``models/``: ``scan`` (the models folder), ``spec`` (a version's metadata), ``verify`` (probe,
  variant speed), ``loading`` (session -> checks -> served), ``repository`` (live reload, load and
  unload on demand), ``runner`` (one onnxruntime session), ``providers`` (--device -> execution
  providers and their options);
- beside them all: ``errors`` (typed domain errors carrying their status code), ``logs``.

Nothing here imports torch, trainer or exporter: the ONNX file's metadata says all the server needs.
"""

from cli_text import VERSION as __version__  # the project's version; v2 ServerMetadata reports it
