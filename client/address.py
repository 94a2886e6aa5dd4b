"""--server (or FMNIST_SERVER) as grpc is to dial it (stdlib only).

People write addresses as they know them from elsewhere: a URL (`http://host:port`, as tonic
and most HTTP tools take it; `grpc://host:port`), a gRPC target URI (`dns:///host:port`,
`unix:/path`), `host[:port]`, or several servers as `ip[:port],ip[:port],...` (gRPC's static
list, `ipv4:a,b`: client/balancing.py). Each is turned into what grpc dials or refused in one
line: grpc itself would read `http://127.0.0.1:52051` as a host name and dial
`[http://127.0.0.1:52051]:443`.
"""

from __future__ import annotations

import re

from client import ClientError, balancing

DEFAULT_PORT = 50051  # the server's default --port
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
ENVIRONMENT = "FMNIST_SERVER"  # read when --server is not given
# gRPC target URIs dialled as written (grpc's own naming); dns: gets DEFAULT_PORT when it has none
_TARGET_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_PLAINTEXT_URLS = ("grpc", "http")
_TLS_URLS = ("grpcs", "https")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(/.*)?", re.DOTALL)


def dial_target(server: str, tls: bool = False, named: str | None = None) -> str:
    """What grpc is to dial for `server`: DEFAULT_PORT when the address names none ("localhost"
    -> "localhost:50051", "[::1]" and "::1" -> "[::1]:50051", "dns:///host" ->
    "dns:///host:50051"; grpc itself would dial 443); `grpc://` and `http://` (plaintext) or
    `grpcs://` and `https://` (TLS, so `tls` must be on) taken off; other gRPC target URIs (unix:,
    ipv4:, ipv6:, vsock:) as written; a comma-separated list as gRPC's static list of IP
    addresses ("10.0.0.1,10.0.0.2:50052" -> "ipv4:10.0.0.1:50051,10.0.0.2:50052"). `named` is
    how error messages name the address (default: "--server <server>")."""
    named = named or f"--server {server}"
    if server.startswith(_TARGET_SCHEMES):
        return server
    if server.startswith("dns:"):
        return _dns_target(server, named)
    if "," in server:
        return _static_list(server, named)
    url = _URL.fullmatch(server)
    if url:
        return _host_port(_url_authority(url, tls, named), named)
    return _host_port(server, named)


def _dns_target(server: str, named: str) -> str:
    """dns:[//authority/]host[:port], with DEFAULT_PORT when no port is named."""
    rest = server[len("dns:"):]
    prefix = "dns:"
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ClientError(f"{named}: write a DNS target as dns:///host:port (three slashes)",
                              exit_code=2)
        prefix = f"dns://{authority}/"
    return prefix + _host_port(rest, named)


def _static_list(server: str, named: str) -> str:
    """Several servers, each ip[:port] with DEFAULT_PORT when it names none, as one static
    target: a name is refused (gRPC's static targets take IP addresses), with dns:/// offered."""
    if "://" in server:
        raise ClientError(f"{named}: write a list of servers without a scheme (10.0.0.1:"
                          f"{DEFAULT_PORT},10.0.0.2:{DEFAULT_PORT}); TLS is --tls-ca", exit_code=2)
    try:
        return balancing.target([_host_port(s.strip(), named) for s in server.split(",")])
    except ValueError as e:
        raise ClientError(f"{named}: {e}", exit_code=2) from None


def _url_authority(url: re.Match, tls: bool, named: str) -> str:
    """The host[:port] of a URL whose scheme says plaintext or TLS as the flags do."""
    scheme, authority, path = url[1].lower(), url[2], url[3]
    if scheme not in _PLAINTEXT_URLS + _TLS_URLS:
        raise ClientError(f"{named}: unknown scheme {scheme}://; write host:port, "
                          f"grpc://host:port (plaintext), grpcs://host:port (TLS, with --tls-ca) "
                          "or a gRPC target such as dns:///host:port", exit_code=2)
    if path not in (None, "/"):
        raise ClientError(f"{named}: a gRPC server address has no path ({path!r}); write "
                          f"{scheme}://host:port", exit_code=2)
    if scheme in _TLS_URLS and not tls:
        raise ClientError(f"{named}: {scheme}:// means TLS: give --tls-ca (the CA of the server), "
                          "or write the address without it for plaintext", exit_code=2)
    if scheme in _PLAINTEXT_URLS and tls:
        raise ClientError(f"{named}: {scheme}:// means plaintext but --tls-ca asks for TLS; "
                          "write the address without it (or as grpcs://)", exit_code=2)
    return authority


def _host_port(server: str, named: str) -> str:
    """host[:port] with DEFAULT_PORT when it names none; an IPv6 host in brackets."""
    if server.startswith("["):  # "[::1]" or "[::1]:50051"
        host, bracket, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None if rest else ""
        if not bracket or port is None:
            raise ClientError(f"{named}: write an IPv6 address as [::1] or [::1]:{DEFAULT_PORT}",
                              exit_code=2)
    elif server.count(":") > 1:  # a bare IPv6 address: "::1"
        host, port = server, ""
    else:
        host, _, port = server.partition(":")
    if not host:
        raise ClientError(f"{named}: no host in it (e.g. {DEFAULT_SERVER})", exit_code=2)
    port = port or str(DEFAULT_PORT)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ClientError(f"{named}: {port!r} is not a port number (1-65535)", exit_code=2)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
