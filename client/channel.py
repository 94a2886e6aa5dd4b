"""The channel to a server: plaintext or TLS (mutual with a client certificate), a bearer token and
a trace context on every call, and bounded retries of the refusals that say "try again"
(client/retries.py). A target that names several replicas (a list, a dns: name) is dialled with
client/balancing.py's settings: round_robin, health checking, keepalive, and a retry policy
that replays UNAVAILABLE on another replica."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from client import ClientError, balancing
from client.retries import MAX_ATTEMPTS, PUSHBACK_ONLY, Retries


def connect(server: str, *, tls_ca: Path | None = None, tls_cert: Path | None = None,
            tls_key: Path | None = None, token: str | None = None,
            traceparent: str | None = None):
    """A Classifier stub (the channel is `stub.channel`) whose calls are retried as
    client/retries.py says: TLS when `tls_ca` is given (with a client certificate for mutual
    TLS), plaintext otherwise; `token` goes with every call as `authorization: Bearer <token>`,
    `traceparent` (W3C Trace Context: `new_trace`) as `traceparent`. With several replicas
    (`balancing.several(server)`) the channel's retry policy replays UNAVAILABLE and the
    interceptor keeps only the server's pushback, so that the two never multiply."""
    if tls_ca is None and (tls_cert or tls_key):
        raise ClientError("--tls-cert/--tls-key need --tls-ca (the CA of the server)", exit_code=2)
    if (tls_cert is None) != (tls_key is None):
        raise ClientError("--tls-cert and --tls-key go together", exit_code=2)
    replicas = balancing.several(server)
    options = _replica_options(server, tls=tls_ca is not None) if replicas else []
    if tls_ca is None:
        channel = grpc.insecure_channel(server, options)
    else:
        pems = [_read_pem(p, what) for p, what in ((tls_ca, "--tls-ca"), (tls_key, "--tls-key"),
                                                   (tls_cert, "--tls-cert"))]
        channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(*pems), options)
    entries = [*([("authorization", f"Bearer {token}")] if token else []),
               *([("traceparent", traceparent)] if traceparent else [])]
    retries = Retries(PUSHBACK_ONLY if replicas else MAX_ATTEMPTS)
    interceptors = [retries, *([_Metadata(entries)] if entries else [])]
    channel = grpc.intercept_channel(channel, *interceptors)
    stub = pb_grpc.ClassifierStub(channel)
    stub.channel = channel
    return stub


def _replica_options(server: str, tls: bool) -> list[tuple[str, object]]:
    """client/balancing.py's channel options; with TLS, a static list's certificates are checked
    against its first address (gRPC would take the whole list, "a:1,b:2", as the name)."""
    options = balancing.channel_options()
    if tls and server.startswith(balancing.STATIC):
        options.append(("grpc.default_authority", server.split(":", 1)[1].split(",")[0]))
    return options


def _read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientError(f"{flag} {path}: cannot read it ({e.strerror or e})",
                          exit_code=2) from None


def new_trace() -> tuple[str, str]:
    """A trace of its own for this run, as W3C Trace Context has it: (the `traceparent` value
    every call sends, sampled, so the server records it whatever its sampling ratio; the trace
    id, which finds the server's spans in a tracing UI). No tracing library is needed: the ids
    are random, as the standard asks; this client's own span is not exported anywhere."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id


class _Metadata(grpc.UnaryUnaryClientInterceptor):
    """Adds `entries` (the bearer token, the trace context) to every call's metadata."""

    def __init__(self, entries: list[tuple[str, str]]):
        self._entries = entries

    def intercept_unary_unary(self, continuation, details, request):
        metadata = [*(details.metadata or ()), *self._entries]
        return continuation(details._replace(metadata=metadata), request)
