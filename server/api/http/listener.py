"""The HTTP port: bound before the models load, served on the server's event loop once it starts.

    listener = HttpListener.bind("127.0.0.1", 8000, security)     # StartupError when taken
    await listener.start(service.app)                             # on the event loop
    ...
    await listener.stop()

`bind` binds every address of --host (server/api/binding.py's rule: "localhost" is 127.0.0.1 and
::1) with plain sockets, as gRPC and /metrics are bound, so a port in use is a start-up error
found within a second; a port in use is an error, never shared. A --workers worker instead serves
the sockets its parent bound and shares with every worker (`sockets`): all of them accept from
one queue, so a worker that stops accepting (retiring) leaves what is queued to the others.
Workers sharing a port by SO_REUSEPORT would each have a queue of their own, which the kernel
resets when its worker closes it (2 connections lost in 42 retirements at ~2,500 requests/s).
TLS uses the gRPC port's certificate flags (--tls-cert,
--tls-key, --tls-client-ca for client certificates).

What aiohttp would otherwise do on the event loop for any client, before a handler could say no:
- inflate a `Content-Encoding: br|gzip|deflate` body (a 16 KB brotli body is 10 GiB of work):
  bodies are read as sent (auto_decompress off) and compressed ones refused (service.py);
- drain what a handler left unread for up to `lingering_time`: off; service.py drains a small
  rest or closes the connection;
- answer a malformed request with its own text quoted whole, logged with a traceback at ERROR:
  here a short 400, counted (`guard.malformed`) and logged at most once a minute;
- accept connections until the process runs out of file descriptors: at `max_connections` open
  ones, a new one is closed at once (`guard.refused`; logged at most once a minute);
- give a TLS handshake a minute: here it has the read timeout, as a request's body has.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from aiohttp import web

from server.api.binding import bracketed, listen_addresses
from server.api.http.errors import error_response
from server.api.security import Security
from server.errors import StartupError, shorten
from server.logs import Throttle

log = logging.getLogger(__name__)

_BACKLOG = 512
_THROTTLE = 60.0  # seconds between log lines about malformed requests or refused connections


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


def bind_sockets(host: str, port: int, listen: bool = True) -> tuple[list[socket.socket], int]:
    """Listening sockets on every address of `host` at `port` (0: one free port, the same for
    all), and the port; with `listen` False bound only (the parent of --workers: its workers
    listen once they can answer). StartupError names the address that could not be bound."""
    sockets = []
    try:
        for address in listen_addresses(host):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except (OSError, OverflowError) as e:  # in use, not an address here, not a port
                raise StartupError(f"cannot serve HTTP on {bracketed(address)}:{port}: "
                                   f"{getattr(e, 'strerror', None) or e} (--http-port; 0 turns "
                                   "HTTP off)") from None
            port = sock.getsockname()[1]
            if listen:
                _listen(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


def _listen(sock: socket.socket) -> None:
    sock.listen(_BACKLOG)
    sock.setblocking(False)


_NEVER = 10.0 ** 9  # seconds: aiohttp's keep-alive timer has no "off"


class ConnectionGuard:
    """The listener's open connections under a cap, and what it turned away: connections over
    the cap and malformed requests (read by /metrics). Touched only on the event loop."""

    def __init__(self, cap: int):
        self.cap = cap
        self.open = 0
        self.refused = 0
        self.malformed = 0
        self._refused_log = Throttle(log, _THROTTLE)
        self._malformed_log = Throttle(log, _THROTTLE)

    def admit(self) -> bool:
        """Count one connection more, or refuse it (False) at the cap. Counted as it is
        accepted, not when its handler starts: asyncio accepts a burst of connections before
        any starts."""
        if self.open < self.cap:
            self.open += 1
            return True
        self.refused += 1
        self._refused_log.log(logging.WARNING, "HTTP connection refused: %d open, the limit "
                              "(--max-connections)", self.open)
        return False

    def release(self) -> None:
        self.open -= 1

    def malformed_request(self, remote: str | None, status: int, problem) -> str:
        """Count and (at most once a minute) log a request aiohttp could not parse; returns the
        short message to answer with."""
        self.malformed += 1
        message = f"malformed HTTP request: {shorten(str(problem), 120)}"
        self._malformed_log.log(logging.WARNING, "%s from %s -> %d", message, remote, status)
        return message


# What one read from a connection asks for. asyncio's plain TCP transport asks for 256 KiB and
# allocates that much before each read; over glibc's 128 KiB mapping threshold (server/process.py)
# each such buffer was a mapping made and unmade per read: 10-25 us of CPU per request (lenet_bn,
# KServe v2 binary, 32 callers, 2 cores). 64 KiB comes from the heap; a 16 MiB body takes 256
# reads instead of 64.
READ_BYTES = 64 * 1024


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, counted by a guard: admitted as it is made, released as its
    connection ends, or, when it never started (a TLS handshake that failed or timed out: asyncio
    then tells the protocol nothing), once the handshake's time is up. It answers what it cannot
    parse with a short 400 instead of aiohttp's own text and an ERROR traceback."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, handshake_timeout: float,
                 **kwargs):
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = True
        self._started = False
        self._loop.call_later(handshake_timeout + 1.0, self._if_never_started)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._started = True
        if hasattr(transport, "max_size"):  # asyncio's plain TCP transport (TLS reads into a
            transport.max_size = READ_BYTES  # buffer of its own, once)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        super().connection_lost(exc)

    def _if_never_started(self) -> None:
        if not self._started:
            self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.release()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # not the client's doing: aiohttp's own account, traceback included
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; the connection is broken")
        response = error_response(status, self._guard.malformed_request(
            request.remote, status, message or exc))
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once (reset: no FIN handshake, no state kept)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _GuardedSite(web.SockSite):
    """A SockSite whose connections are made by the guard's factory, with our backlog."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, guard: ConnectionGuard,
                 handler_args: dict, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float):
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=_BACKLOG)
        self._guard, self._handler_args = guard, handler_args
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        tls = {} if self._ssl_context is None else {
            "ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout}
        self._server = await loop.create_server(self._connection, sock=self._sock,
                                                backlog=self._backlog, **tls)

    async def stop(self) -> None:
        """Stop accepting, then close the socket. asyncio (3.11) makes the transport of an
        accepted connection one loop pass after the accept, and fails it, silently, when the
        server was closed in between: the connection was left to the garbage collector, which
        reset it (a retiring worker at ~2,500 new connections/s: 2-3 in 16 retirements). So the
        accepting stops first (an accept already queued is cancelled with its reader), the
        connections accepted before get their transports (the pass below runs after them: the
        loop runs callbacks in order), then the close."""
        if self._server is not None and self._server.sockets:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            await asyncio.sleep(0)
        await super().stop()

    def _connection(self) -> asyncio.Protocol:
        if not self._guard.admit():
            return _Refused()
        return _Handler(self._runner.server, self._guard, self._handshake_timeout,
                        loop=asyncio.get_running_loop(), **self._handler_args)


class HttpListener:
    """Bound sockets, then (start) aiohttp serving an application on them."""

    def __init__(self, sockets: list[socket.socket], port: int,
                 context: ssl.SSLContext | None, read_timeout: float, idle_timeout: float,
                 max_connections: int):
        self.sockets = sockets
        self.port = port
        self.tls = context is not None
        self.guard = ConnectionGuard(max_connections)
        self._context = context
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._runner: web.AppRunner | None = None
        self._sites: list[_GuardedSite] = []

    @classmethod
    def bind(cls, host: str, port: int, security: Security, read_timeout: float = 10.0,
             idle_timeout: float = 300.0, max_connections: int = 1024,
             sockets: tuple[socket.socket, ...] = ()) -> HttpListener:
        """`idle_timeout`: a connection without a request in progress for this long is closed
        (one that never sends one, or sends half its headers, too); 0: never.
        `max_connections`: connections open at once; more are closed as they come.
        `sockets`: bound already, by the parent of --workers (`host` and `port` unused)."""
        context = ssl_context(security)  # a bad certificate fails before the port is taken
        if sockets:
            for sock in sockets:
                _listen(sock)  # the first worker makes it listen; the others find it listening
            return cls(list(sockets), sockets[0].getsockname()[1], context, read_timeout,
                       idle_timeout, max_connections)
        sockets, port = bind_sockets(host, port)
        return cls(sockets, port, context, read_timeout, idle_timeout, max_connections)

    async def start(self, app: web.Application) -> None:
        """Serve `app` (on the running loop). A client that goes away cancels its handler, as a
        cancelled gRPC call does. aiohttp's keep-alive timer runs from the connection's start
        and between requests: it is the idle timeout (its default, an hour, let idle
        connections hold file descriptors; its 0 would close after every answer)."""
        handler_args = dict(access_log=None, lingering_time=0, auto_decompress=False,
                            keepalive_timeout=self._idle_timeout or _NEVER)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5,
                                     **handler_args)
        await self._runner.setup()
        for sock in self.sockets:
            site = _GuardedSite(self._runner, sock, self.guard, handler_args, self._context,
                                self._read_timeout or _NEVER)
            await site.start()
            self._sites.append(site)

    async def stop_accepting(self) -> int:
        """Close the listening sockets, keep the connections (a retiring --workers worker: new
        connections, and those queued, go to the others, which share the sockets); returns how
        many were closed."""
        sites, self._sites = self._sites, []
        for site in sites:
            await site.stop()
        return len(sites)

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
