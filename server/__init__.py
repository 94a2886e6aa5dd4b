"""fmnist-serve's server: exported ONNX models behind fmnist.v1.Classifier and KServe v2, over gRPC
and HTTP.

Layers, each importing only those below it (tests/server/test_layers.py keeps it so):

- bootstrap: ``cli`` (flags, logging, signals; ``python -m server --help``), ``app``
  (``create_server``: binds, loads, wires the layers; gRPC health from the dataplane's
  readiness), ``loop`` (the one event loop gRPC and HTTP share, and its lag watch), ``process``
  (the open-file limit, glibc's mapping threshold), ``metrics/`` (``registry``: the server's
  Prometheus metrics; ``exposition``: the /metrics port; ``summing`` and ``workers``: the
  --workers parent's /metrics), ``workers/`` (``cores``: usable cores and thread counts;
  ``ports``: the held port; ``supervisor``: start, watch, recycle, stop; ``worker``);
- ``api/``: the wire protocols and nothing else, two sibling adapters over the dataplane that
  never import each other: ``grpc/`` (``classifier`` fmnist.v1, ``kserve`` and
  ``kserve_tensors`` KServe v2 / Triton, ``status`` domain errors -> status codes and deadlines,
  ``transport`` options, the handler that bounds reading a request and begins its call record
  (request id, trace context), ``auth`` the token interceptor, ``reflection``) and ``http/``
  (aiohttp: ``v2`` and ``v2_tensors`` KServe v2 REST, ``classify`` the friendly JSON API,
  ``answers`` the JSON bodies, ``openapi``, ``body`` and ``deadlines`` the limits, ``auth``,
  ``errors``, ``listener`` the port and its connection guard, ``service`` the routes, the
  middleware and the page); beside them ``binding`` (every address of --host bound, or no
  start) and ``security`` (TLS, the token settings);
- ``dataplane/``: every operation the protocols offer: ``core`` (the calls), ``types`` and
  ``views`` (the values protocols convert to and from), ``tensors`` (the models as KServe v2
  tensors, counted before built), ``served`` (what is served and refused: one owner),
  ``control`` (live reload, load and unload), ``access`` (tokens and roles: who may call what),
  ``imagefile`` (an image file's bytes -> 28x28, pure), ``request_images`` (a request's images
  under the pixel budgets), ``calls`` (a request's call record: its id, trace context, timed
  phases), ``tracing`` (the OTEL_* switch; a no-op when off) and ``otel`` (the spans, imported
  only when tracing is on), ``saturation`` (the fmnist_saturation gauge);
- ``batching/``: ``batcher`` (dynamic batching around one runner), ``cost_model`` (batch run times
  learned by size, for admission and saturation);
- ``models/``: ``scan`` (the models folder), ``spec`` (a version's metadata), ``verify`` (probe,
  variant speed), ``loading`` (session -> checks -> served), ``repository`` (what the folder
  holds: what to add and remove, storage faults), ``runner`` (one onnxruntime session),
  ``weights`` (the shared, memory-mapped copy of a model's weights), ``providers`` (--device ->
  execution providers; the CUDA set-up itself is execution_providers.py, shared with the
  exporter);
- beside them all: ``admission`` (every refusal before a request runs: limits, draining,
  deadlines, the pixel budget, the queue's price), ``errors`` (typed domain errors carrying
  their status code), ``logs`` (and the current request's ids on its lines).

Nothing here imports torch, trainer or exporter: the ONNX file's metadata says all the server needs.
"""

from cli_text import VERSION as __version__  # the project's version; v2 ServerMetadata reports it
