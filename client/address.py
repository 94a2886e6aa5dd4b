"""--server as grpc is to dial it (stdlib only)."""

from __future__ import annotations

import re

from client import ClientError

DEFAULT_PORT = 50051  # the server's default --port
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
# gRPC target URIs are passed on as written (grpc's own naming: dns:///host:port, unix:/path, ...)
_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def with_default_port(server: str) -> str:
    """--server as grpc is to dial it: DEFAULT_PORT when the address names none ("localhost" ->
    "localhost:50051", "[::1]" and "::1" -> "[::1]:50051"; grpc itself would dial 443). gRPC
    target URIs (dns:, unix:, ipv4:, ipv6:, vsock:) are passed on as written."""
    if server.startswith(_TARGET_SCHEMES):
        return server
    if server.startswith("["):  # "[::1]" or "[::1]:50051"
        host, bracket, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None if rest else ""
        if not bracket or port is None:
            raise ClientError(f"--server {server}: write an IPv6 address as [::1] or "
                              f"[::1]:{DEFAULT_PORT}", exit_code=2)
    elif server.count(":") > 1:  # a bare IPv6 address: "::1"
        host, port = server, ""
    else:
        host, _, port = server.partition(":")
    if not host:
        raise ClientError(f"--server {server}: no host in it (e.g. {DEFAULT_SERVER})", exit_code=2)
    port = port or str(DEFAULT_PORT)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ClientError(f"--server {server}: {port!r} is not a port number (1-65535)",
                          exit_code=2)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
