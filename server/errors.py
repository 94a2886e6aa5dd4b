"""Typed domain errors. Each carries the name of the gRPC status code it travels as.

The core raises these and never imports grpc; `rpc.map_errors` is the one place that turns
`ServingError.code` into a `grpc.StatusCode` (by name). Anything that is not a `ServingError` is a
bug and becomes INTERNAL there, with its traceback logged.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: an error a client caused or can act on. `code` names a grpc.StatusCode member."""

    code = "UNKNOWN"


class InvalidRequest(ServingError):
    """A bad request field (model name, top_k, image count, ...)."""

    code = "INVALID_ARGUMENT"


class InvalidImage(InvalidRequest):
    """One image of a request cannot be used; the message names its index and why."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"image {index}: {reason}")
        self.index = index
        self.reason = reason


class ModelNotFound(ServingError):
    code = "NOT_FOUND"


class Overloaded(ServingError):
    """Too much work queued or in flight. `retry_after` (seconds, or None) is the server's guess
    of when a retry may succeed; the servicer sends it as grpc-retry-pushback-ms."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(ServingError):
    """No valid bearer token (server/dataplane/access.py)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServingError):
    """A valid caller without the role the operation needs, or an API that is off."""

    code = "PERMISSION_DENIED"


class Unavailable(ServingError):
    """Not ready yet, or shutting down."""

    code = "UNAVAILABLE"


class Unimplemented(ServingError):
    """A method this server does not offer as it runs (v2 repository loads without a models
    folder to load from)."""

    code = "UNIMPLEMENTED"


class DeadlineExceeded(ServingError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(ServingError):
    """The caller went away; nobody reads the answer, so the work stops."""

    code = "CANCELLED"


class DecodeError(ValueError):
    """Raised by the pure decoder (no index there); the core wraps it into `InvalidImage`."""


class StartupError(Exception):
    """The server cannot start as asked (e.g. --device cuda without an active CUDA provider, a
    --model-version that does not exist, a port that cannot be bound). The CLI prints it and exits 1."""


class ModelLoadError(Exception):
    """One model file cannot be served (fails to load, bad metadata, wrong inputs/outputs). The
    store logs one line and skips that model; the rest are still served."""


def shorten(text, limit: int = 64) -> str:
    """`text` (a client's string: a model name, a method, ...) as a repr of about `limit`
    characters, so a request can never put megabytes or control characters into a log line or
    an error message. Bytes are shown escaped; what was cut is counted."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
