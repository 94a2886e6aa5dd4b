"""Which addresses a --host stands for, and binding every one of them or failing to start.

grpc binds a name like "localhost" to each address it resolves to and reports success when any
one of them binds: with 127.0.0.1:50051 taken by another server, a second one came up on [::1]
alone, with a grpc INFO line as the only sign, and clients reached either server by chance. Here
each address is bound on its own, and one that does not bind is a start-up error naming it.
"""

from __future__ import annotations

import ipaddress
import socket

from server.api.security import Security
from server.errors import StartupError


def listen_addresses(host: str) -> list[str]:
    """The IP addresses `host` means for listening: an IP literal is itself; "localhost" is
    127.0.0.1, and ::1 too where this host has IPv6 loopback; a name is what it resolves to."""
    bare = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(bare))]
    except ValueError:
        pass
    if bare == "localhost":
        return ["127.0.0.1"] + (["::1"] if _has_ipv6_loopback() else [])
    try:
        infos = socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StartupError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def bracketed(address: str) -> str:
    """An address as it goes before ":port" ("[::1]", "127.0.0.1")."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def bind(grpc_server, security: Security, host: str, port: int, shared: bool = False) -> int:
    """Bind every address of `host` at `port` (0: one free port, the same for all); returns the
    port. StartupError names the first address that could not be bound. Unless the port is
    `shared` (--workers' SO_REUSEPORT), it is tried with a plain socket first, so that a port in
    use is our one line, not grpc's own error log before it."""
    for address in listen_addresses(host):
        where = f"{bracketed(address)}:{port}"
        if port and not shared:
            _check_free(address, port)
        try:
            bound = security.add_port(grpc_server, where)  # TLS when configured
        except RuntimeError as e:
            raise StartupError(f"cannot listen on {where}: {e}") from None
        if bound == 0:
            raise StartupError(f"cannot listen on {where} (in use, or not an address here)")
        port = bound
    return port


def _check_free(address: str, port: int) -> None:
    """StartupError when `address`:`port` cannot be bound (as grpc binds it: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except (OSError, OverflowError) as e:
            raise StartupError(f"cannot serve gRPC on {bracketed(address)}:{port}: "
                               f"{getattr(e, 'strerror', None) or e} (--port; 0 picks a free "
                               "one)") from None


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
