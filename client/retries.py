"""Bounded retries, with jitter, of the calls a server refuses with "try again".

- RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms` trailer: the server is full (its queue, its
  requests in flight, its decoding budget; server/api/grpc/status.py) and says how long until it has
  room. The retry waits that long plus a random share of the backoff, so callers refused together
  do not all come back at the same moment. Without the trailer (a message over the server's
  size limit) the refusal is final.
- UNAVAILABLE: a server draining or starting, or not reachable yet; the retry waits a random
  delay up to the backoff ("full jitter").

The backoff starts at INITIAL_BACKOFF and doubles up to MAX_BACKOFF; a call makes at most
MAX_ATTEMPTS attempts (by its last refusal's code), all within its own timeout, and what still
fails is reported as it is. A full server says when it has room, and under a burst of callers that
can take several rounds: sixty `predict.py folder/` runs at once against a queue of 4 images all
finished with 8 attempts (2 cores; 1,508 refusals for 3,000 answers). A server that is unavailable
is mostly draining or down, where more attempts only delay the report: 5 (about 0.4 s of backoff
on average).

With several replicas (client/balancing.py: --server a,b or a dns: target) the work is split:
the channel's retry policy replays UNAVAILABLE on another replica after a short backoff
(20 ms, doubling up to 0.5 s: a draining or dead replica is no reason to wait), and this
interceptor retries only RESOURCE_EXHAUSTED with a pushback (PUSHBACK_ONLY), which that policy
leaves alone. So UNAVAILABLE costs at most the policy's 5 tries, never 5 rounds of this
interceptor with 5 tries each; a call that meets both codes in turn is bounded by 8 rounds of
at most 5 tries, and always by its timeout. Pushback stays here although gRPC's policy honours
the trailer too: its ceiling is 5 attempts, a full server took up to 8, and it adds no jitter
to the server's hint.
"""

from __future__ import annotations

import random
import time

import grpc

_FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_ATTEMPTS = {_FULL: 8, grpc.StatusCode.UNAVAILABLE: 5}
PUSHBACK_ONLY = {_FULL: MAX_ATTEMPTS[_FULL]}  # beside a retry policy that replays UNAVAILABLE
INITIAL_BACKOFF = 0.05  # seconds
MAX_BACKOFF = 1.0
PUSHBACK = "grpc-retry-pushback-ms"


class Retries(grpc.UnaryUnaryClientInterceptor):
    """Retries each unary call as the module docstring says, the codes of `max_attempts` only,
    each up to its count of attempts."""

    def __init__(self, max_attempts: dict = MAX_ATTEMPTS):
        self._max_attempts = max_attempts

    def intercept_unary_unary(self, continuation, details, request):
        deadline = None if details.timeout is None else time.monotonic() + details.timeout
        backoff = INITIAL_BACKOFF
        attempt = 1
        while True:
            outcome = continuation(details, request)
            if attempt >= self._max_attempts.get(outcome.code(), 1):
                return outcome
            delay = retry_delay(outcome, backoff)
            if delay is None:
                return outcome
            if deadline is not None and time.monotonic() + delay >= deadline:
                return outcome  # no time left for another attempt: the refusal stands
            time.sleep(delay)
            attempt, backoff = attempt + 1, min(2 * backoff, MAX_BACKOFF)
            if deadline is not None:
                details = details._replace(timeout=deadline - time.monotonic())


def retry_delay(outcome, backoff: float) -> float | None:
    """Seconds to wait before trying again after `outcome` (a finished call), or None when it is
    not to be retried."""
    code = outcome.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return random.uniform(0, backoff)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback = _pushback_seconds(outcome.trailing_metadata() or ())
        return None if pushback is None else pushback + random.uniform(0, backoff)
    return None


def _pushback_seconds(metadata) -> float | None:
    """The server's `grpc-retry-pushback-ms` in seconds; None when it sent none, or one that is
    not a count of milliseconds (gRPC's rule: then do not retry)."""
    for key, value in metadata:
        if key == PUSHBACK:
            text = value.decode() if isinstance(value, bytes) else value
            return int(text) / 1000 if text.isdigit() else None
    return None
