"""How a client spreads its calls over many replicas, as a Kubernetes headless Service is used:
one target that names every replica, `round_robin` over them, a retry policy that replays calls
refused with UNAVAILABLE on another replica, client-side health checking (a replica whose health
says NOT_SERVING gets no new calls), and keepalive pings that find a dead connection.

    options = channel_options()
    channel = grpc.insecure_channel(target(["10.203.0.11:50051", "10.203.0.12:50051"]), options)

On a cluster the target is `dns:///<headless service>:50051` instead of `target(...)`'s static
list; the rest is the same. client/predict.py dials this way when --server names several
servers or a dns: target (client/channel.py); the fleet harness (harness/scenarios.py) measures
these settings. Plain data (no grpc import). What each setting did against three replicas on
three network namespaces: docs/serving.md, "Running many replicas" (`make fleet`).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Sequence

SERVICES = ("fmnist.v1.Classifier", "inference.GRPCInferenceService")
STATIC = ("ipv4:", "ipv6:")  # gRPC's schemes for a static list of addresses


@dataclass(frozen=True)
class Balancing:
    """The client's settings; the defaults are what `make fleet` measured, but for the ping
    timeout and the retry buffer, which came later (tests/client/test_replicas.py)."""

    max_attempts: int = 5  # gRPC's ceiling: the first try and 4 retries
    initial_backoff_s: float = 0.02  # a retry waits random(0, this x 2^n), at most max_backoff
    max_backoff_s: float = 0.5
    health_check: bool = True  # follow each replica's health "" (its readiness)
    keepalive_s: float = 1.0  # ping a connection with calls in flight this often ...
    # ... and drop it when a ping goes this long unanswered: the keepalive ping's own timeout,
    # and every other ping's too. gRPC sends one ping at a time, and the flow-control (BDP)
    # ping it sends after data waits 60 s for its answer by default: a replica stopped
    # (SIGSTOP) while that ping was out kept a call for the whole --timeout, keepalive or not.
    keepalive_timeout_s: float = 1.0
    max_reconnect_backoff_s: float = 5.0  # a replica that comes back is used within this
    # Per try: a try without an answer this long is cancelled and sent to another replica
    # (gRPC's perAttemptRecvTimeout, behind grpc.experimental.enable_hedging). None: no limit.
    per_attempt_timeout_s: float | None = None
    # Outlier detection: a replica whose tries fail this often (in half a second, from 10
    # tries) is left out for 2 s, longer each time again, at most this share of the replicas.
    outlier_failure_percent: int | None = None
    outlier_max_ejection_percent: int = 50
    # A request larger than this is committed at once and never replayed. gRPC's default,
    # 256 KiB, is less than many of predict.py's batches: against a draining server with 3 tries
    # allowed, a 784,000-byte request reached it once, 3 times with this (the server's default
    # --max-message-bytes).
    retry_buffer_bytes: int = 16 * 1024 * 1024


def target(servers: Sequence[str]) -> str:
    """gRPC's static resolver for a list of "address:port" (IPv4 or bracketed IPv6 literals):
    "ipv4:10.203.0.11:50051,10.203.0.12:50051"."""
    if not servers:
        raise ValueError("target needs at least one server")
    versions = {_ip_version(server.rsplit(":", 1)[0].strip("[]")) for server in servers}
    if len(versions) > 1:
        raise ValueError("a list of servers takes IPv4 or IPv6 addresses, not both (gRPC's "
                         "static targets are one or the other); a name that resolves to both "
                         "goes as dns:///<name>:<port>")
    return f"ipv{versions.pop()}:" + ",".join(servers)


def _ip_version(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address: a list of servers takes IP addresses; "
                         f"give a name as dns:///{host or '<name>'}:<port>, which dials every "
                         "address it resolves to") from None


def several(to: str) -> bool:
    """Whether the target `to` may name more than one replica, and so is dialled with these
    settings: a dns: name (a headless Service answers with every ready pod) or a static list of
    several addresses."""
    return to.startswith("dns:") or (to.startswith(STATIC) and "," in to)


def service_config(settings: Balancing = Balancing(),
                   services: Sequence[str] = SERVICES) -> dict:
    """The service config: the load-balancing policy and every method's retry policy."""
    retry = {"maxAttempts": settings.max_attempts,
             "initialBackoff": _duration(settings.initial_backoff_s),
             "maxBackoff": _duration(settings.max_backoff_s),
             "backoffMultiplier": 2,
             "retryableStatusCodes": ["UNAVAILABLE"]}
    if settings.per_attempt_timeout_s is not None:
        retry["perAttemptRecvTimeout"] = _duration(settings.per_attempt_timeout_s)
    policy: dict = {"round_robin": {}}
    if settings.outlier_failure_percent is not None:
        policy = {"outlier_detection_experimental": {
            "interval": "0.5s", "baseEjectionTime": "2s", "maxEjectionTime": "10s",
            "maxEjectionPercent": settings.outlier_max_ejection_percent,
            "failurePercentageEjection": {"threshold": settings.outlier_failure_percent,
                                          "enforcementPercentage": 100,
                                          "minimumHosts": 2, "requestVolume": 10},
            "childPolicy": [policy]}}
    config = {"loadBalancingConfig": [policy],
              "methodConfig": [{"name": [{"service": s} for s in services],
                                "retryPolicy": retry}]}
    if settings.health_check:
        config["healthCheckConfig"] = {"serviceName": ""}
    return config


def channel_options(settings: Balancing = Balancing(),
                    services: Sequence[str] = SERVICES) -> list[tuple[str, object]]:
    """grpc channel options carrying the service config and the connection settings."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    options = [("grpc.service_config", json.dumps(service_config(settings, services))),
               ("grpc.enable_retries", 1),
               ("grpc.per_rpc_retry_buffer_size", settings.retry_buffer_bytes),
               ("grpc.keepalive_time_ms", ms(settings.keepalive_s)),
               ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_s)),
               ("grpc.http2.ping_timeout_ms", ms(settings.keepalive_timeout_s)),
               ("grpc.keepalive_permit_without_calls", 0),
               ("grpc.http2.max_pings_without_data", 0),
               ("grpc.initial_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", ms(settings.max_reconnect_backoff_s))]
    if settings.per_attempt_timeout_s is not None:
        options.append(("grpc.experimental.enable_hedging", 1))
    return options


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
