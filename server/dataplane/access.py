"""Who may call what: one policy for every protocol (the gRPC interceptor, server/api/grpc/auth.py,
and the HTTP middleware, server/api/http/auth.py, both ask `Access.check`).

Operations are named as gRPC names them ("/fmnist.v1.Classifier/Classify",
"/inference.GRPCInferenceService/RepositoryModelLoad"); each HTTP route says which one it answers
like. Each needs a role:
- open: the services in --open-services (health and reflection by default, so load balancers,
  probes and grpcurl need no token);
- inference: everything that reads or classifies (Classify, ListModels, ModelInfer, metadata,
  config, statistics, the repository index): any token of --auth-token-file or --admin-token-file;
- admin: what changes what is served (RepositoryModelLoad/Unload, and anything added later that
  changes state): a token of --admin-token-file only, and only while the repository API is on
  (--repository-api on; off by default, as Triton's --model-control-mode=none).
Without token files every caller has every role (plaintext on loopback is the default).

A call without a valid token is UNAUTHENTICATED; with a token of the wrong role, or to the
repository API while it is off, PERMISSION_DENIED naming what it needs. Tokens are compared in
constant time (against every token), never logged; each has a label that logs may show.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from server.errors import PermissionDenied, StartupError, Unauthenticated, shorten

log = logging.getLogger(__name__)

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
ADMIN_OPERATIONS = frozenset({"/inference.GRPCInferenceService/RepositoryModelLoad",
                              "/inference.GRPCInferenceService/RepositoryModelUnload"})
INFERENCE, ADMIN = "inference", "admin"
ANONYMOUS = "anonymous"  # the caller's label where no token is required


@dataclass(frozen=True)
class Token:
    secret: bytes
    label: str
    role: str


class TokenFile:
    """The tokens of a file, one per line (`TOKEN`, or `LABEL TOKEN`; blank lines and `#`
    comments skipped), all of one role; re-read when the file's modification time, size or
    inode changes (checked with os.stat on each call: a few microseconds, and a revoked token
    stops working on the very next call). A file that vanishes, cannot be read or holds no
    token keeps the last good set, with one warning: an editor replacing the file, or an
    operator emptying it by mistake, must not lock every client out."""

    def __init__(self, path: Path, role: str = INFERENCE):
        self.path = Path(path)
        self.role = role
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._tokens: tuple[Token, ...] = ()
        self._warned = False
        problem = self._reload(initial=True)
        if problem and not self._stamp and "read" in problem:
            raise StartupError(f"cannot read the token file {self.path}: it {problem}")
        if problem:
            raise StartupError(f"the token file {self.path} {problem}")

    def tokens(self) -> tuple[Token, ...]:
        self._reload()
        return self._tokens

    def _reload(self, initial: bool = False) -> str | None:
        """Re-read the file when it changed; what is wrong with it, or None."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return None
            tokens = _parse(self.path.read_text(encoding="utf-8"), self.path, self.role)
        except (OSError, UnicodeDecodeError) as e:
            return self._keep(f"cannot be read ({type(e).__name__})", initial)
        if not tokens:
            return self._keep("has no tokens (one per line)", initial)
        with self._lock:
            self._stamp, self._tokens, self._warned = stamp, tokens, False
        log.info("token file %s: %d %s token(s) %s", self.path, len(tokens), self.role,
                 "loaded" if initial else "reloaded")  # how many, never which
        return None

    def _keep(self, problem: str, initial: bool) -> str:
        if not initial and not self._warned:
            log.warning("token file %s %s; keeping the %d token(s) loaded before", self.path,
                        problem, len(self._tokens))
        self._warned = True
        return problem


def _parse(text: str, path: Path, role: str) -> tuple[Token, ...]:
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        label, secret = (words[0], words[1]) if len(words) > 1 else (f"{path.name}:{number}",
                                                                     words[0])
        tokens.append(Token(secret.encode(), label[:64], role))
    return tuple(tokens)


def bearer_token(pairs) -> bytes | None:
    """The token of an `authorization: Bearer <token>` entry among (key, value) pairs (gRPC
    metadata or HTTP headers), or None."""
    for item in pairs or ():
        key, value = item[0], item[1]
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode("latin-1", "replace")
    return None


class Access:
    def __init__(self, inference: TokenFile | None = None, admin: TokenFile | None = None,
                 open_services=OPEN_SERVICES, repository_api: bool = False):
        self._files = [f for f in (admin, inference) if f is not None]
        self.open = frozenset(open_services)
        self.repository_api = repository_api
        if repository_api and admin is None:
            log.warning("the repository API is on (--repository-api on) without "
                        "--admin-token-file: %s", "anyone who can reach the server may load and "
                        "unload models" if not self._files else "no token may use it")

    @property
    def tokens_required(self) -> bool:
        return bool(self._files)

    def is_open(self, operation: str) -> bool:
        return (operation.lstrip("/").rsplit("/", 1)[0] in self.open
                or operation in self.open)

    def check(self, operation: str, token: bytes | None,
              carrier: str = "`authorization: Bearer <token>` metadata") -> str:
        """The caller's label when it may call `operation`; else Unauthenticated or
        PermissionDenied, with a message naming what it needs (`carrier`: where the token
        goes, in the protocol's words)."""
        admin = operation in ADMIN_OPERATIONS
        if admin and not self.repository_api:
            raise PermissionDenied(f"{shorten(operation.rsplit('/', 1)[-1])} changes what is "
                                   "served, and the repository API is off; start the server "
                                   "with --repository-api on (and --admin-token-file) to use it")
        if self.is_open(operation) and not admin:
            return ANONYMOUS
        if not self._files:
            return ANONYMOUS
        if token is None:
            raise Unauthenticated(f"no {carrier}")
        found = self._find(token)
        if found is None:
            raise Unauthenticated("the bearer token is not valid")
        if admin and found.role != ADMIN:
            raise PermissionDenied(f"{shorten(operation.rsplit('/', 1)[-1])} needs an admin "
                                   f"token (--admin-token-file); {found.label!r} is an "
                                   f"{found.role} token")
        return found.label

    def _find(self, presented: bytes) -> Token | None:
        """Constant time in the presented token's content: compared with every known token."""
        found = None
        for file in self._files:
            for token in file.tokens():
                if hmac.compare_digest(presented, token.secret) and found is None:
                    found = token
        return found
