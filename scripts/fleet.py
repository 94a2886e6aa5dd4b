"""Replicas on separate hosts: N `python -m server` replicas, each in its own network namespace
with its own address (harness/fleet.py), driven from this host by one gRPC channel set up as for
a Kubernetes headless Service (client/balancing.py), through every scenario of
harness/scenarios.py. Prints per scenario the calls, failures, p50/p99 and each replica's count
from its /metrics, then a table; exit status 1 when a scenario broke its rule.

    python scripts/fleet.py                        # `make fleet`: every scenario, ~2 minutes
    python scripts/fleet.py --calls 2000 --scenarios steady sigterm

Rules: no scenario loses a call, except link faults, where at most the calls caught on the cut
link may fail and none once the client has dropped it; steady load puts each replica within
25% of the mean; a rolling update answers only the old or the new version and switches each
replica once. Needs root (network namespaces) and iproute2. Without --models-dir it trains and
exports lenet_bn on a small synthetic data set first (~20 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from client.balancing import Balancing
from harness import netns, scenarios
from harness.fleet import Fleet
from harness.models import build_small_models

SCENARIOS = ("steady", "sigkill", "sigterm", "rolling", "links")
# the slow replica's other remedy: each try given 0.1 s, a replica failing half its tries left out
HEDGED = Balancing(per_attempt_timeout_s=0.1, outlier_failure_percent=50)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path,
                   help="a models folder with lenet_bn (default: train and export one)")
    p.add_argument("--replicas", type=int, default=3, help="replicas, one namespace each")
    p.add_argument("--calls", type=int, default=5000,
                   help="calls per scenario (link faults: 60%% of it, each of its two runs)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                   help="which scenarios to run, in this order")
    return p


def run(fleet: Fleet, name: str, calls: int) -> list[scenarios.Report]:
    if name == "steady":
        return [scenarios.steady(fleet, calls)]
    if name == "sigkill":
        return [scenarios.sigkill(fleet, calls)]
    if name == "sigterm":  # each replica once
        return [scenarios.sigterm(fleet, calls, victim) for victim in range(fleet.size)]
    if name == "rolling":
        return [scenarios.rolling_update(fleet, calls)]
    link_calls = calls * 3 // 5
    return [scenarios.link_faults(fleet, link_calls, name="link faults, round_robin"),
            scenarios.link_faults(fleet, link_calls, HEDGED,
                                  name="link faults, 0.1 s tries + outlier detection")]


def problems(report: scenarios.Report) -> list[str]:
    """How the report breaks its scenario's rule (module docstring)."""
    if report.name.startswith("link faults"):
        late = sum(report.after_noticed.failures.values())
        return [f"{report.name}: {late} failed after the cut was noticed"] if late else []
    failed = sum(report.summary.failures.values())
    found = [f"{report.name}: {failed} failed call(s)"] if failed else []
    if report.name == "steady":
        mean = sum(report.served) / len(report.served)
        if any(abs(n - mean) > 0.25 * mean for n in report.served):
            found.append(f"steady: {report.served} is not within 25% of the mean {mean:.0f}")
    if report.name == "rolling update" and (set(report.switches) != {1}
                                            or any(report.old_after_switch)
                                            or not all(report.out_of_rotation)):
        found.append(f"rolling update: switches {report.switches}, old answers after them "
                     f"{report.old_after_switch}, out of rotation while loading "
                     f"{report.out_of_rotation}")
    return found


def table(reports: list[scenarios.Report]) -> str:
    rows = [("scenario", "calls", "failed", "failed tries", "p50 ms", "p99 ms",
             "served per replica")]
    rows += [(r.name, str(len(r.summary.calls)), str(sum(r.summary.failures.values())),
              str(r.summary.retried), f"{r.summary.percentile_ms(50):.1f}",
              f"{r.summary.percentile_ms(99):.1f}", " / ".join(map(str, r.served)))
             for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info
                      if line.startswith("model name")), platform.processor())
    return model


def main(args: argparse.Namespace) -> int:
    if netns.missing_tools():
        print("make fleet needs iproute2 (ip): apt-get install iproute2", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-models-") as work:
        models = args.models_dir or build_small_models(Path(work), ("lenet_bn",))
        reports = []
        with Fleet(models, args.replicas, server_args=("--poll-seconds", "0.2", "--unready-while-loading")) as fleet:
            print(f"{args.replicas} replicas: {', '.join(fleet.targets)} ({cpu_model()}, "
                  f"{len(os.sched_getaffinity(0))} cores)", flush=True)
            for name in args.scenarios:
                for report in run(fleet, name, args.calls):
                    print("\n".join(report.lines()), flush=True)
                    reports.append(report)
    print(f"\n{table(reports)}\n\n{time.monotonic() - started:.0f} s in all")
    found = [p for r in reports for p in problems(r)]
    for problem in found:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
