"""Who may call: TLS (optionally mutual) for the listening port, and bearer tokens per call.

    security = Security(tls_cert=Path("server.pem"), tls_key=Path("server.key"),
                        tls_client_ca=Path("clients-ca.pem"),      # mutual TLS: optional
                        token_file=Path("tokens.txt"))             # bearer tokens: optional
    grpc.aio.server(..., interceptors=auth.interceptors(security))   # server/api/auth.py
    port = security.add_port(grpc_server, "0.0.0.0:50051")

Without TLS the port is plaintext: fine on loopback, where only this host can connect, so that is
the default; binding any other address without TLS logs a warning (a reverse proxy may be doing
TLS, so it is not refused).

Tokens: `--auth-token-file` holds one token per line (blank lines and `#` comments skipped). The
file is re-read when its modification time, size or inode changes, so tokens are added or revoked
without a restart; a file that vanishes or cannot be read keeps the last good set (an editor that
replaces the file must not lock every client out) and logs one warning. A call must carry
`authorization: Bearer <token>` metadata, else UNAUTHENTICATED before any handler runs. Tokens
are compared with `hmac.compare_digest` against every known token (no early exit on the first
match), and never logged. Health and reflection stay open by default (`OPEN_SERVICES`), so load
balancers and grpcurl keep working without a token. The interceptor is server/api/auth.py; this
module imports grpc only when used, so `python -m server --help` and the argument parsing stay
free of it (the CLI imports grpc after logging is set up).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from server.errors import StartupError

log = logging.getLogger(__name__)

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


def is_loopback(host: str) -> bool:
    """True for addresses only this host can reach: localhost, 127.0.0.0/8, ::1."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise StartupError(f"the {what} {path} is not PEM (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class Security:
    """The security settings of one server; the default is plaintext without tokens."""

    tls_cert: Path | None = None  # PEM certificate chain of the server
    tls_key: Path | None = None  # PEM private key of that certificate
    tls_client_ca: Path | None = None  # PEM CA(s): clients must present a certificate it signed
    token_file: Path | None = None  # one bearer token per line; None: no tokens required
    open_services: tuple[str, ...] = OPEN_SERVICES  # callable without a token

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self) -> None:
        """StartupError when the flags cannot work together."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise StartupError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and not self.tls:
            raise StartupError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")

    def credentials(self):
        """The server's grpc.ServerCredentials from the PEM files; StartupError names a bad file."""
        import grpc

        self.check()
        key, cert = _read(self.tls_key, "TLS key"), _read(self.tls_cert, "TLS certificate")
        client_ca = (None if self.tls_client_ca is None
                     else _read(self.tls_client_ca, "TLS client CA"))
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)

    def add_port(self, grpc_server, address: str) -> int:
        """Bind `address` with TLS when configured, plaintext otherwise; returns the bound port
        (0 when it could not bind, as grpc's add_*_port do)."""
        self.check()
        if self.tls:
            return grpc_server.add_secure_port(address, self.credentials())
        host = address.rsplit(":", 1)[0]
        if not is_loopback(host):
            log.warning("listening on %s WITHOUT TLS: anyone who can reach it can read and send "
                        "requests (use --tls-cert/--tls-key unless a proxy terminates TLS)", host)
        return grpc_server.add_insecure_port(address)


class TokenFile:
    """The tokens of a file, re-read when the file changes (checked with os.stat on each call:
    a few microseconds, and a revoked token stops working on the very next call)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._warned = False
        if not self._reload(initial=True):
            raise StartupError(f"cannot read the token file {self.path}")
        if not self._tokens:
            raise StartupError(f"the token file {self.path} has no tokens (one per line)")

    def tokens(self) -> tuple[bytes, ...]:
        self._reload()
        return self._tokens

    def _reload(self, initial: bool = False) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return True
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            if not self._warned and not initial:
                log.warning("token file %s cannot be read (%s); keeping the %d token(s) loaded "
                            "before", self.path, type(e).__name__, len(self._tokens))
            self._warned = True
            return False
        tokens = tuple(line.strip().encode() for line in text.splitlines()
                       if line.strip() and not line.lstrip().startswith("#"))
        with self._lock:
            self._stamp, self._tokens, self._warned = stamp, tokens, False
        log.info("token file %s: %d token(s) %s", self.path, len(tokens),
                 "loaded" if initial else "reloaded")  # how many, never which
        return True

    def accepts(self, presented: bytes) -> bool:
        """Constant time in the presented token's content: compared with every known token."""
        ok = False
        for token in self.tokens():
            ok |= hmac.compare_digest(presented, token)
        return ok


def add_args(parser) -> None:
    """The "security" argument group of `python -m server`."""
    s = parser.add_argument_group("security (docs/security.md)")
    s.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help="serve TLS with this certificate chain (with --tls-key); default: "
                        "plaintext, with a warning unless --host is a loopback address")
    s.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    s.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA")
    s.add_argument("--auth-token-file", type=Path, metavar="FILE",
                   help="require `authorization: Bearer <token>` with one of this file's tokens "
                        "(one per line; re-read when it changes)")
    s.add_argument("--open-services", default=",".join(OPEN_SERVICES), metavar="NAMES",
                   help="comma-separated services (or /service/Method) callable without a token; "
                        "'' closes them all")


def from_args(args) -> Security:
    return Security(args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_token_file,
                    tuple(name.strip() for name in args.open_services.split(",") if name.strip()))
