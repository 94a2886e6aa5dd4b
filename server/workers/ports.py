"""The public gRPC port of --workers: checked free of other programs, held for the workers, and
closed in a worker that retires. (The HTTP port's sockets are bound by the parent and inherited
by the workers, supervisor.py; grpc cannot serve a socket it did not bind.)

The workers share the port with SO_REUSEPORT, which Linux also grants to any other program of
the same user that sets it: a second `python -m server --workers 2` on the same port would
quietly take half the connections. So the parent first binds each address without SO_REUSEPORT
(the check a single server makes: a port in use is a start-up error), then sets SO_REUSEPORT on
that bound, never listening, socket and keeps it: the workers can join, a program binding without
SO_REUSEPORT still cannot, and the port stays taken while a worker is being replaced. A listening
socket gets connections; this one never does.
"""

from __future__ import annotations

import os
import socket

from server.api.binding import bracketed, listen_addresses
from server.errors import StartupError


def hold(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind `port` (0: a free one, the same on every address) on every address of `host`, as a
    lone server would; returns the held sockets and the port. StartupError names the address
    that is taken, and --port."""
    held = []
    try:
        for address in listen_addresses(host):
            held.append(_bind(address, port))
            port = held[-1].getsockname()[1]
    except BaseException:
        release(held)
        raise
    return held, port


def release(held: list[socket.socket]) -> None:
    for s in held:
        s.close()


def close_listeners(ports: set[int]) -> int:
    """Stop this process listening on `ports` while it goes on serving its connections (a worker
    that retires: new connections go to the other workers). For gRPC's port: grpc has no call for
    it, so each listening socket is shut down under it (asyncio's, HTTP's, are closed by the
    listener itself: shut under asyncio, they would fail every accept with EINVAL); grpc then logs "Closing acceptor. Failed accept4:
    Invalid argument" once and carries on. Connections still in that socket's accept queue are
    reset, unless the kernel moves them to another worker (sysctl net.ipv4.tcp_migrate_req=1).
    Returns how many sockets it shut down."""
    return _shut_down(ports, listening=True, how=socket.SHUT_RD)


def close_connections(ports: set[int]) -> int:
    """Half-close this process's accepted TCP connections on `ports`: a FIN after what was
    sent, so each client reads to the end and then sees its connection closed. grpc has no call
    for it (its own stop sends a GOAWAY but cancels the calls that cross it). A client's calls
    not answered yet end UNAVAILABLE uncommitted, which a retry policy replays elsewhere.
    Returns how many connections it closed."""
    return _shut_down(ports, listening=False, how=socket.SHUT_WR)


def _shut_down(ports: set[int], listening: bool, how: int) -> int:
    """shutdown(`how`) on each of this process's TCP sockets on `ports` that listens (with
    `listening` False: each connection with a peer); how many it shut down."""
    closed = 0
    for fd in _socket_fds():
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:  # closed meanwhile
            continue
        with s:
            try:
                if _is_ours(s, ports, listening):
                    s.shutdown(how)
                    closed += 1
            except OSError:  # not connected, or gone
                continue
    return closed


def _is_ours(s: socket.socket, ports: set[int], listening: bool) -> bool:
    if (s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM
            or bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) != listening
            or s.getsockname()[1] not in ports):
        return False
    return listening or bool(s.getpeername())


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc: TIME_WAIT is no owner
        s.bind((address, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # after the check: workers join
    except (OSError, OverflowError) as e:  # in use, not an address here, not a port
        s.close()
        raise StartupError(f"cannot listen on {bracketed(address)}:{port} (--port): "
                           f"{e.strerror or e} (another program has it?)") from None
    return s


def _socket_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.append(int(name))
        except OSError:
            continue
    return fds
