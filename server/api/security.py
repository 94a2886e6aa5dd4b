"""Who may connect and call: TLS (optionally mutual) for the listening ports, and the settings of
bearer tokens and roles, which server/dataplane/access.py enforces for both protocols.

    security = Security(tls_cert=Path("server.pem"), tls_key=Path("server.key"),
                        tls_client_ca=Path("clients-ca.pem"),      # mutual TLS: optional
                        token_file=Path("tokens.txt"))             # bearer tokens: optional
    access = security.access()                                     # the one token policy
    port = security.add_port(grpc_server, "0.0.0.0:50051")

Without TLS the port is plaintext: fine on loopback, where only this host can connect, so that is
the default; binding any other address without TLS logs a warning (a reverse proxy may be doing
TLS, so it is not refused).

Tokens: `--auth-token-file` (inference tokens) and `--admin-token-file` (admin tokens: the only
ones that may load and unload models, and only with `--repository-api on`) hold one token per
line, re-read when they change (server/dataplane/access.py says how). This module imports grpc
only when used, so `python -m server --help` and the argument parsing stay free of it (the CLI
imports grpc after logging is set up).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from server.dataplane.access import ADMIN, OPEN_SERVICES, Access, TokenFile
from server.errors import StartupError

log = logging.getLogger(__name__)


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
    token_file: Path | None = None  # inference tokens, one per line; None: no tokens required
    open_services: tuple[str, ...] = OPEN_SERVICES  # callable without a token
    admin_token_file: Path | None = None  # admin tokens: may load and unload models
    repository_api: bool = False  # --repository-api on: load and unload may be called at all

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def access(self) -> Access:
        """The token policy these settings make; StartupError for a token file that cannot
        be used."""
        return Access(None if self.token_file is None else TokenFile(self.token_file),
                      None if self.admin_token_file is None else TokenFile(self.admin_token_file,
                                                                           ADMIN),
                      self.open_services, self.repository_api)

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
                        "(inference: classify, infer, metadata, list, index; one per line, "
                        "optionally `LABEL TOKEN`; re-read when it changes)")
    s.add_argument("--admin-token-file", type=Path, metavar="FILE",
                   help="admin tokens (as --auth-token-file): they alone may load and unload "
                        "models, and also do everything an inference token does")
    s.add_argument("--repository-api", choices=("on", "off"), default="off",
                   help="on: KServe v2 RepositoryModelLoad/Unload may change what is served (with "
                        "an admin token when there are token files); off: refused "
                        "(PERMISSION_DENIED / 403). Live reload from --models-dir is unaffected")
    s.add_argument("--open-services", default=",".join(OPEN_SERVICES), metavar="NAMES",
                   help="comma-separated services (or /service/Method) callable without a token; "
                        "'' closes them all")


def from_args(args) -> Security:
    return Security(args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_token_file,
                    tuple(name.strip() for name in args.open_services.split(",") if name.strip()),
                    args.admin_token_file, args.repository_api == "on")
