"""HTTP on the same process, event loop and core as gRPC: KServe v2 REST as Triton speaks it, a
friendly classify endpoint, an OpenAPI description and a web page at /.

- ``listener``: the port (bound before the models load; SO_REUSEPORT for --workers; TLS);
- ``service``: the aiohttp application and its one middleware (draining, tokens, errors);
- ``v2``: /v2/... routes, answered by the gRPC v2 servicer's own methods; ``tensors``: v2 JSON
  and binary tensors <-> the gRPC messages, so server/api/grpc/kserve_tensors.py checks both alike;
- ``classify``: /v1/models and /v1/models/{m}:classify (multipart files or a raw image);
- ``openapi``: /openapi.json; ``static/``: the page (plain HTML, CSS, JavaScript; no CDN);
- ``errors`` (server.errors codes -> HTTP statuses, {"error": ...} bodies), ``body`` (size and
  read-time limits), ``deadlines`` (X-Request-Timeout), ``auth`` (bearer tokens),
  ``jsonpb`` (protobuf messages as Triton's JSON).

aiohttp, because it is an asyncio HTTP server and client in one well-kept package (aio-libs)
that runs on an event loop it is given (grpc.aio's), serves pre-bound sockets (so ports are
bound before the models load, with SO_REUSEPORT when asked), and parses multipart bodies itself;
Starlette under uvicorn would bring three packages (plus python-multipart) and a server that
wants to own its loop and its sockets' life.
"""
