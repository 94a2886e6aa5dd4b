"""fmnist-serve's server: exported ONNX models behind fmnist.v1.Classifier and KServe v2, over gRPC
and HTTP.

Layers, each importing only those below it (tests/server/test_layers.py keeps it so):

- bootstrap: ``cli`` (flags, logging, signals; ``python -m server --help``), ``app``
  (``create_server``: binds, loads, wires the layers, health and reflection), ``loop`` (the
  event loop gRPC and HTTP share, and its lag), ``process`` (file limits, freed memory),
  ``metrics/`` (``registry``: Prometheus /metrics from the dataplane's and batchers' events;
  ``summing``: the --workers parent's /metrics combining every worker's; ``exposition``: the
  port; ``workers``: the parent's own figures), ``workers/`` (--workers: N server processes on
  one port behind a parent: ``cores`` (usable cores, thread counts), ``ports`` (the held port),
  ``supervisor`` (start, watch, recycle, stop), ``worker``);
- ``api/``: the wire protocols and nothing else; the only layer that imports grpc: ``binding``
  (every address of --host bound, or no start), ``security`` (TLS, token files); ``grpc/``:
  ``classifier`` (fmnist.v1), ``kserve`` and ``kserve_tensors`` (KServe v2 / Triton),
  ``status`` (domain errors -> status codes, deadlines), ``transport`` (options, the handler
  that bounds reading a request and begins its call record: request id, trace context),
  ``reflection`` (v1 and v1alpha), ``auth`` (the token check); ``http/`` (aiohttp on the same
  loop and core: ``v2`` and ``v2_tensors`` KServe v2 REST, ``classify`` the friendly JSON API,
  ``answers`` the JSON bodies, ``openapi``, ``body`` and ``deadlines`` the limits, ``auth``,
  ``errors``, ``listener`` the port, ``service`` the routes, the middleware and the page);
- ``dataplane/``: protocol-neutral serving: ``core`` (admission, limits, deadlines, draining,
  top-k: what every protocol calls), ``types`` (the values protocols convert to and from),
  ``tensors`` and ``views`` (KServe v2's tensors and descriptions), ``imagefile`` (image bytes
  -> 28x28, pure), ``request_images`` (a request's images under the pixel budgets), ``served``
  (the served versions), ``control`` (live reload, load, unload), ``access`` (who may call
  what), ``calls`` (a request's call record: its id, trace context, timed phases),
  ``tracing`` (the OTEL_* switch; a no-op when off) and ``otel`` (the spans, imported only when
  tracing is on), ``saturation`` (the fmnist_saturation gauge);
- ``batching/``: ``batcher`` (dynamic batching around one runner), ``cost_model`` (batch run times
  learned by size, for admission and saturation);
- ``models/``: ``scan`` (the models folder), ``spec`` (a version's metadata), ``verify`` (probe,
  variant speed), ``loading`` (session -> checks -> served), ``repository`` (live reload, load and
  unload on demand), ``runner`` (one onnxruntime session), ``providers`` (--device -> execution
  providers and their options);
- beside them all: ``errors`` (typed domain errors carrying their status code), ``logs`` (and
  the current request's ids on its lines), ``admission`` (every refusal of work, in order).

Nothing here imports torch, trainer or exporter: the ONNX file's metadata says all the server needs.
"""

from cli_text import VERSION as __version__  # the project's version; v2 ServerMetadata reports it
