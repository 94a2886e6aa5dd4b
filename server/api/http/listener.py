"""The HTTP port: bound before the models load, served on the server's event loop once it starts.

    listener = HttpListener.bind("127.0.0.1", 8000, security)     # StartupError when taken
    await listener.start(service.app)                             # on the event loop
    ...
    await listener.stop()

`bind` binds every address of --host (server/api/binding.py's rule: "localhost" is 127.0.0.1 and
::1) with plain sockets, as gRPC and /metrics are bound, so a port in use is a start-up error
found within a second. `reuse_port=True` sets SO_REUSEPORT, so that several server processes
(--workers) share the port and the kernel spreads connections over them; without it a port in
use is an error, never shared. TLS uses the gRPC port's certificate flags (--tls-cert,
--tls-key, --tls-client-ca for client certificates).
"""

from __future__ import annotations

import socket
import ssl

from aiohttp import web

from server.api.binding import bracketed, listen_addresses
from server.api.security import Security
from server.errors import StartupError

_BACKLOG = 512


def ssl_context(security: Security) -> ssl.SSLContext | None:
    """The server's TLS context from the PEM files (None: plaintext); StartupError names a file
    that cannot be used."""
    security.check()
    if not security.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(security.tls_cert, security.tls_key)
        if security.tls_client_ca is not None:
            context.load_verify_locations(security.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"cannot use --tls-cert {security.tls_cert} / --tls-key "
                           f"{security.tls_key} / --tls-client-ca {security.tls_client_ca} for "
                           f"HTTP: {getattr(e, 'strerror', None) or e}") from None
    return context


def bind_sockets(host: str, port: int, reuse_port: bool = False) -> tuple[list[socket.socket], int]:
    """Listening sockets on every address of `host` at `port` (0: one free port, the same for
    all), and the port. StartupError names the address that could not be bound."""
    sockets = []
    try:
        for address in listen_addresses(host):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except (OSError, OverflowError) as e:  # in use, not an address here, not a port
                raise StartupError(f"cannot serve HTTP on {bracketed(address)}:{port}: "
                                   f"{getattr(e, 'strerror', None) or e} (--http-port; 0 turns "
                                   "HTTP off)") from None
            port = sock.getsockname()[1]
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


_NEVER = 10.0 ** 9  # seconds: aiohttp's keep-alive timer has no "off"


class HttpListener:
    """Bound sockets, then (start) aiohttp serving an application on them."""

    def __init__(self, sockets: list[socket.socket], port: int,
                 context: ssl.SSLContext | None, read_timeout: float, idle_timeout: float):
        self.sockets = sockets
        self.port = port
        self.tls = context is not None
        self._context = context
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._runner: web.AppRunner | None = None

    @classmethod
    def bind(cls, host: str, port: int, security: Security, read_timeout: float = 10.0,
             idle_timeout: float = 300.0, reuse_port: bool = False) -> HttpListener:
        """`idle_timeout`: a connection without a request in progress for this long is closed
        (one that never sends one, or sends half its headers, too); 0: never."""
        context = ssl_context(security)  # a bad certificate fails before the port is taken
        sockets, port = bind_sockets(host, port, reuse_port)
        return cls(sockets, port, context, read_timeout, idle_timeout)

    async def start(self, app: web.Application) -> None:
        """Serve `app` (on the running loop). A client that goes away cancels its handler, as a
        cancelled gRPC call does; an unread body over the limit is drained for at most the read
        timeout, so that its 413 reaches the client. aiohttp's keep-alive timer runs from the
        connection's start and between requests: it is the idle timeout (its default, an hour,
        let idle connections hold file descriptors; its 0 would close after every answer)."""
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     lingering_time=self._read_timeout, shutdown_timeout=0.5,
                                     keepalive_timeout=self._idle_timeout or _NEVER)
        await self._runner.setup()
        for sock in self.sockets:
            await web.SockSite(self._runner, sock, ssl_context=self._context).start()

    async def stop(self) -> None:
        """Stop listening and close every connection (Server.stop has waited for the requests
        in flight, within its grace period)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
