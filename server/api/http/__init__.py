"""HTTP on the same process, event loop and dataplane as gRPC: KServe v2 REST as Triton speaks
it, a friendly classify endpoint, an OpenAPI description and a web page at /.

- ``listener``: the port (bound before the models load; a --workers worker serves the sockets
  its parent bound; TLS);
- ``service``: the aiohttp application and its one middleware (draining, tokens, errors);
- ``v2``: /v2/... routes, each a dataplane call; ``v2_tensors``: v2 JSON and binary tensors <->
  the dataplane's tensors; ``answers``: the JSON bodies made from the dataplane's values;
- ``classify``: /v1/models and /v1/models/{m}:classify (multipart files or a raw image);
- ``openapi``: /openapi.json; ``static/``: the page (plain HTML, CSS, JavaScript; no CDN);
- ``errors`` (server.errors codes -> HTTP statuses, {"error": ...} bodies), ``body`` (size and
  read-time limits), ``deadlines`` (X-Request-Timeout), ``auth`` (who may call a route).

aiohttp, because it is an asyncio HTTP server and client in one well-kept package (aio-libs)
that runs on an event loop it is given (grpc.aio's), serves pre-bound sockets (so ports are
bound before the models load, or by the parent of --workers), and parses multipart bodies itself;
Starlette under uvicorn would bring three packages (plus python-multipart) and a server that
wants to own its loop and its sockets' life.
"""
