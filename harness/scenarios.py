"""What `make fleet` (scripts/fleet.py) and tests/fleet/ put a Fleet through: each scenario drives
it with a bounded Load over the balancing settings of client/balancing.py, breaks something at
an observed moment (never after a sleep), and returns a Report: the calls as the client saw them
(failures, p50/p99) and each replica's count from its own /metrics. Scenarios leave the fleet as
they found it (a replica killed or stopped is started again, a link put back).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

from client import balancing
from client.balancing import Balancing
from harness.delay_proxy import DelayProxy
from harness.fleet import Fleet, served_since
from harness.channelz import subchannel_states
from harness.load import Load, Summary, raw_request
from harness.wait import until

MODEL = "lenet_bn"
CONCURRENCY = 16
SLOW_PORT = 50052  # the slow replica's delay proxy, beside its own port


@dataclass
class Report:
    name: str
    summary: Summary
    served: list[int]  # per replica: calls answered OK, from its fmnist_requests_total
    refused: list[int]  # per replica: calls it answered UNAVAILABLE (a retry took them elsewhere)
    notes: list[str] = field(default_factory=list)
    after_noticed: Summary | None = None  # link faults: the calls once the cut was noticed
    switches: list[int] = field(default_factory=list)  # rolling update: per replica
    old_after_switch: list[int] = field(default_factory=list)  # ... old answers after it
    out_of_rotation: list[bool] = field(default_factory=list)  # ... NOT_SERVING while loading

    def lines(self) -> list[str]:
        refused = f", refused (retried elsewhere) {self.refused}" if any(self.refused) else ""
        return [f"{self.name}: {self.summary.line()}",
                f"  per replica (from /metrics): served {self.served}{refused}",
                *(f"  {note}" for note in self.notes)]


def load(fleet: Fleet, calls: int, settings: Balancing = Balancing(), **kwargs) -> Load:
    return Load(balancing.target(fleet.targets), balancing.channel_options(settings),
                raw_request(MODEL), calls, concurrency=kwargs.pop("concurrency", CONCURRENCY),
                **kwargs)


def report(name: str, fleet: Fleet, before: list[dict], summary: Summary,
           notes: list[str] = ()) -> Report:
    after = fleet.requests()
    return Report(name, summary, served_since(before, after),
                  served_since(before, after, "UNAVAILABLE"), list(notes))


def steady(fleet: Fleet, calls: int) -> Report:
    """Load on a healthy fleet: round_robin spreads it."""
    before = fleet.requests()
    return report("steady", fleet, before, load(fleet, calls).start().join())


def sigkill(fleet: Fleet, calls: int, victim: int = 0) -> Report:
    """A replica SIGKILLed a third of the way through: its connections break mid-call, the
    retry policy replays those calls (not answered yet, so not committed) on the others."""
    before = fleet.requests()
    running = load(fleet, calls).start()
    running.wait_for(calls // 3)
    fleet.replicas[victim].kill()
    killed_at = running.finished
    summary = running.join()
    result = report(f"SIGKILL replica {victim}", fleet, before, summary,
                    [f"replica {victim} killed after {killed_at} calls (its count: its last "
                     "/metrics before the kill)"])
    fleet.replicas[victim].restart()
    return result


def sigterm(fleet: Fleet, calls: int, victim: int = 1,
            settings: Balancing = Balancing(health_check=False)) -> Report:
    """A replica SIGTERMed a third of the way through: it drains (server/app.py Server.stop)
    and exits 0; the calls it turns away must be ones the client can replay elsewhere. By
    default the client does not follow health (many do not), so the drain alone must move it."""
    before = fleet.requests()
    running = load(fleet, calls, settings).start()
    running.wait_for(calls // 3)
    replica = fleet.replicas[victim]
    replica.terminate()
    status = replica.wait_exit()
    summary = running.join()
    drain = [line.split(" INFO ")[-1] for line in replica.proc.lines
             if "stopping:" in line or "gRPC connection(s)" in line]
    result = report(f"SIGTERM replica {victim}", fleet, before, summary,
                    [f"replica {victim} exited {status} (its count: its last /metrics before "
                     "it exited)", *drain])
    replica.restart()
    return result


def publish(models_dir, model: str, source_version: int, version: int) -> None:
    """A new version as the exporter publishes one: written under a hidden `.N.<pid>.tmp`
    name, then renamed into place (the server never sees a half-written folder)."""
    tmp = models_dir / model / f".{version}.{os.getpid()}.tmp"
    shutil.copytree(models_dir / model / str(source_version), tmp)
    os.rename(tmp, models_dir / model / str(version))


def rolling_update(fleet: Fleet, calls: int, old: int = 1, new: int = 2) -> Report:
    """Version `new` published to one replica at a time (each polls its folder), the next only
    once the previous serves it. Every answer must be `old` or `new`; each replica switches once
    (one "now serving" line, and no `old` answer after its switch). Its readiness is watched
    through the switch, as the client's health checking sees it: with --unready-while-loading
    (the fleet's replicas run with it) it goes NOT_SERVING while the new version loads, and the
    others take the traffic."""
    before = fleet.requests()
    watches = [replica.watch_health() for replica in fleet.replicas]
    running = load(fleet, 20 * calls, seconds=120).start()  # until stopped, within bounds
    notes, switched, out_of_rotation = [], {}, []
    try:
        for replica, watch in zip(fleet.replicas, watches):
            running.wait_for(running.finished + calls // (2 * len(fleet.replicas) + 2))
            started = time.monotonic()
            publish(replica.models_dir, MODEL, old, new)
            replica.proc.wait_for_log(f"now serving {MODEL} v{new}", timeout=60)
            replica.proc.wait_for_log(f"unloaded {MODEL} v{old}", timeout=60)
            switched[replica.index] = replica.requests("version", "OK").get(str(old), 0)
            seen = watch.between(started, time.monotonic())
            out_of_rotation.append("NOT_SERVING" in seen)
            notes.append(f"replica {replica.index}: serves v{new} "
                         f"{time.monotonic() - started:.2f} s after it was published; readiness "
                         f"meanwhile: {' -> '.join(seen)}")
        running.wait_for(running.finished + calls // 10)
    finally:
        running.stop()
        for watch in watches:
            watch.stop()
    summary = running.join()
    result = report("rolling update", fleet, before, summary, notes)
    result.out_of_rotation = out_of_rotation
    for replica in fleet.replicas:
        result.switches.append(replica.proc.count(f"now serving {MODEL} v{new}"))
        result.old_after_switch.append(int(replica.requests("version", "OK").get(str(old), 0)
                                           - switched[replica.index]))
    result.notes += [f"switches per replica: {result.switches}, v{old} answers after each "
                     f"switch: {result.old_after_switch}",
                     f"answers by version: {dict(sorted(summary.versions.items()))}"]
    return result


def link_faults(fleet: Fleet, calls: int, settings: Balancing = Balancing(), cut: int = 1,
                slow: int = 2, delay_ms: float = 200, name: str = "link faults") -> Report:
    """Replica `slow` behind a link that delays what the client sends it by `delay_ms` for the
    whole load (harness/delay_proxy.py), replica `cut`'s link cut a third of the way through
    (`ip link set <veth> down`: its calls in flight get no answer, nothing tells either side).
    The client notices the cut when a keepalive ping goes unanswered: its subchannel to that
    replica leaves READY (read from channelz)."""
    before = fleet.requests()
    targets = list(fleet.targets)
    targets[slow] = f"{fleet.replicas[slow].address}:{SLOW_PORT}"
    target = balancing.target(targets)
    proxy = DelayProxy(fleet.net.exec_prefix(slow), targets[slow], fleet.targets[slow], delay_ms)
    with proxy:
        running = Load(target, balancing.channel_options(settings), raw_request(MODEL), calls,
                       concurrency=CONCURRENCY).start()
        try:
            running.wait_for(calls // 3)
            cut_at = time.monotonic()
            fleet.net.cut(cut)
            until(lambda: subchannel_states(target).get(f"ipv4:{targets[cut]}") != "READY",
                  30, "the client noticing the cut link")
            noticed = time.monotonic() - cut_at
            summary = running.join()
        finally:
            fleet.net.restore(cut)
    around = summary.between(cut_at - 60, cut_at + noticed)
    result = report(name, fleet, before, summary, [
        f"settings: {_settings_line(settings)}",
        f"before the cut (replica {slow} +{delay_ms:g} ms): {summary.between(0, cut_at).line()}",
        f"replica {cut}'s link cut: the client dropped it {noticed:.2f} s later; calls that ended "
        f"after the cut and started before then: "
        f"{Summary([c for c in around.calls if c.started + c.seconds > cut_at]).line()}",
        f"after that: {summary.between(cut_at + noticed).line()}"])
    result.after_noticed = summary.between(cut_at + noticed)
    return result


def _settings_line(settings: Balancing) -> str:
    parts = ["round_robin",
             f"keepalive {settings.keepalive_s:g}+{settings.keepalive_timeout_s:g} s"]
    if settings.per_attempt_timeout_s is not None:
        parts.append(f"perAttemptRecvTimeout {settings.per_attempt_timeout_s:g} s")
    if settings.outlier_failure_percent is not None:
        parts.append(f"outlier detection at {settings.outlier_failure_percent}% failed tries "
                     f"(at most {settings.outlier_max_ejection_percent}% ejected)")
    return ", ".join(parts)
