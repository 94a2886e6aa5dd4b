"""The /metrics port: prometheus_client's request handler on a threading HTTP server of our own.

prometheus_client's `start_http_server` gives every connection a thread of its own for as long
as the client keeps it, so a few hundred silent connections would hold as many threads forever.
Here a connection that sends nothing for `TIMEOUT` seconds is dropped, and at most
`MAX_CONNECTIONS` are served at once (more are closed as they come): scrapers are few.

    server = MetricsServer(registry, "127.0.0.1", 8002)   # 0: a free port (server.port)
    ...
    server.stop()
"""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

from server.errors import StartupError

TIMEOUT = 10.0  # seconds a connection may stay silent (between requests, or inside one)
MAX_CONNECTIONS = 64


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple, handler, family: int):
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """As HTTPServer's, without its socket.getfqdn: a DNS lookup at start-up, which also
        needs the idna codec a server running as another user may not be able to import."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(registry: CollectorRegistry, host: str, port: int) -> "MetricsServer":
    """A MetricsServer, or StartupError naming the address when the port cannot be bound."""
    try:
        return MetricsServer(registry, host, port)
    except (OSError, OverflowError) as e:  # in use, not an address here, not a port
        raise StartupError(f"cannot serve metrics on {host}:{port}: {e} (--metrics-port; 0 "
                           "turns it off)") from None


class MetricsServer:
    """Serving `registry` at /metrics on host:port from a thread of its own. OSError (or
    OverflowError, for a port out of range) when the port cannot be bound."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        handler = MetricsHandler.factory(registry)
        handler.timeout = TIMEOUT  # socketserver sets it on each connection's socket
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host.strip("[]"), port), handler, family)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
