"""One attack against a running server, and its verdict: the answer, the reply's size, health
latency on both protocols while it ran, the server's log lines it caused, RSS and file
descriptors before and after (waiting for the descriptors to come back)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from harness.process import ServerProcess, Usage
from harness.wait import until
from scripts.attacks.catalog import Attack, Target
from scripts.attacks.watch import HealthWatch

HEALTH_BOUND = 1.0  # seconds: a health answer during an attack slower than this fails it
LOG_LINE_BOUND = 2000  # characters: a longer line quotes the request
LOG_LINES_BOUND = 20  # lines one attack may cause
FDS_SLACK = 4  # descriptors over the count before, once the attack's connections are gone
RSS_SLACK_MB = 100  # resident memory over what it was before, once the attack is answered


@dataclass(frozen=True)
class Outcome:
    attack: str
    answer: str
    reply_bytes: int
    detail: str
    health_grpc: float
    health_http: float
    probe_failures: tuple[str, ...]
    rss_before: float
    rss_after: float
    fds_before: int
    fds_after: int
    log_lines: int
    longest_log_line: int
    seconds: float

    def problems(self, attack: Attack) -> list[str]:
        """What a hardened server should not have done; empty when it held."""
        found = []
        if self.answer not in attack.expect:
            found.append(f"answered {self.answer} ({self.detail[:120]!r}), expected "
                         f"{' or '.join(attack.expect)}")
        if self.reply_bytes > attack.max_reply:
            found.append(f"a reply of {self.reply_bytes:,} bytes (bound {attack.max_reply:,})")
        for protocol, seconds in (("gRPC", self.health_grpc), ("HTTP", self.health_http)):
            if seconds > HEALTH_BOUND:
                found.append(f"{protocol} health took {seconds:.2f} s during the attack")
        if self.probe_failures:
            found.append(f"health probes failed: {self.probe_failures[0]}")
        if self.longest_log_line > LOG_LINE_BOUND:
            found.append(f"a log line of {self.longest_log_line:,} characters")
        if self.log_lines > LOG_LINES_BOUND:
            found.append(f"{self.log_lines} log lines")
        if self.rss_after > self.rss_before + RSS_SLACK_MB:
            found.append(f"resident memory {self.rss_before:.0f} -> {self.rss_after:.0f} MB")
        if self.fds_after > self.fds_before + FDS_SLACK:
            found.append(f"file descriptors {self.fds_before} -> {self.fds_after}")
        return found


def run(server: ServerProcess, target: Target, attack: Attack, full: bool) -> Outcome:
    before, lines_before = server.usage(), len(server.lines)
    started = time.monotonic()
    with HealthWatch(target.host, target.grpc_port, target.http_port) as watch:
        reply = attack.send(target, full)
    took = time.monotonic() - started
    after = _settled(server, before)
    new_lines = server.lines[lines_before:]
    return Outcome(
        attack.name, reply.status, reply.size, reply.detail, watch.grpc.slowest,
        watch.http.slowest, tuple(watch.grpc.failures + watch.http.failures), before.rss_mb,
        after.rss_mb, before.fds, after.fds, len(new_lines),
        max((len(line) for line in new_lines), default=0), took)


def _settled(server: ServerProcess, before: Usage, timeout: float = 30.0) -> Usage:
    """The server's usage once its descriptors and memory are back within FDS_SLACK and
    RSS_SLACK_MB of `before` (the attack's connections closed, its memory freed), or what it is
    after `timeout` seconds."""
    def back() -> Usage | None:
        now = server.usage()
        if now.fds <= before.fds + FDS_SLACK and now.rss_mb <= before.rss_mb + RSS_SLACK_MB:
            return now
        return None

    try:
        return until(back, timeout)
    except AssertionError:
        return server.usage()
