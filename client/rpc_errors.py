"""A failed call (grpc.RpcError) in one line a person can act on (stdlib only: it reads the status
code by name, so it imports without grpc).
"""

from __future__ import annotations

from client.address import DEFAULT_PORT


def describe_rpc_error(error, server: str, timeout: float, tls: bool = False) -> str:
    """One line that says what went wrong with a call (a grpc.RpcError) and what to do about it."""
    code, details = error.code().name, error.details() or ""
    if code == "UNAVAILABLE":
        return _unavailable(server, details, tls)
    if code == "UNIMPLEMENTED":
        return (f"{server} answers gRPC but not fmnist.v1.Classifier ({details}): wrong port, or "
                "another service?")
    if code == "UNAUTHENTICATED":
        return (f"{server} refused the call (UNAUTHENTICATED: {details}); give a token with "
                "--token or the FMNIST_TOKEN environment variable")
    if code == "DEADLINE_EXCEEDED":
        return (f"no answer from {server} within --timeout {timeout:g}s: give it longer "
                "(--timeout), or check that the server is not overloaded")
    return f"{code}: {details}"


def _unavailable(server: str, details: str, tls: bool) -> str:
    """UNAVAILABLE: a server draining after SIGTERM (it refuses new calls while those in flight
    finish), a failed TLS handshake, a port that is not gRPC, no server at all, or none of
    several replicas ready (round_robin's "connections to all backends failing", whose last
    error may be one replica's health saying NOT_SERVING), each with its own advice."""
    text = details.lower()
    failure = _tls_failure(details, tls)
    if "shutting down" in text:  # the server's own refusal while it drains (docs/serving.md)
        return (f"the server at {server} is draining (shutting down); try again or use another "
                "replica")
    if failure:
        return f"TLS with {server} failed: {failure}"
    if "all backends failing" in text:
        return (f"no server at {server} takes calls ({details}): each is down, or not ready "
                "(its health says NOT_SERVING: starting, draining or serving no model); is one "
                "running (make serve)?")
    if not tls and "socket closed" in text:
        return (f"{server} closed the connection ({details}); if it serves TLS, give --tls-ca "
                "(and --tls-cert/--tls-key for mutual TLS)")
    if "connection refused" in text:
        return (f"nothing listens at {server} (connection refused): is the fmnist server running "
                f"(make serve), and on this port (it listens on {DEFAULT_PORT} unless told "
                "otherwise)?")
    if "http/2" in text:
        return (f"{server} does not speak gRPC ({details}): wrong port? (the Prometheus metrics "
                f"port answers HTTP/1; the fmnist server's gRPC port is {DEFAULT_PORT} unless "
                "told otherwise)")
    return f"cannot reach the fmnist server at {server} ({details}); is it running (make serve)?"


def _tls_failure(details: str, tls: bool) -> str | None:
    """A one-line reason for a failed TLS handshake in gRPC's (long) connection error, or None.
    With TLS 1.3 a server that refuses the client's certificate (or its absence) just closes the
    connection: on a TLS channel, "Socket closed" while connecting means that."""
    text = details.lower()
    if tls and "failed to connect" in text and "socket closed" in text:
        return ("the server closed the connection during the handshake: it requires a client "
                "certificate (--tls-cert/--tls-key) from a CA it trusts")
    if "certificate_verify_failed" in text:
        return ("the server's certificate is not signed by the --tls-ca given (or its name does "
                "not match the address)")
    if "certificate_required" in text or "peer did not return a certificate" in text:
        return "the server requires a client certificate: give --tls-cert and --tls-key"
    if any(word in text for word in ("ssl", "tls", "handshake", "tsi_")):
        return ("the TLS handshake failed (a plaintext server, a client certificate it does not "
                "accept, or a protocol mismatch)")
    return None
