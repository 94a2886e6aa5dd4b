"""Cold start, part of `make bench-serve`: seconds from `python -m server` to SERVING with every
model of the folder, and from a --workers worker's death (SIGKILL) to its replacement serving;
and where that time goes, from the server's own log lines:

- start-up: from the process's start (a worker's: its predecessor's death) to its "starting:"
  line: Python and its imports (grpc, onnxruntime, numpy), the flags;
- sessions: each model's onnxruntime session (with --share-weights, on a host's first start,
  the optimized copy is prepared here; later starts map it);
- warm-up: each model's first run (batch 1); probes: its probe images, checked;
- batchers: each batcher's timed warm-up runs (the cost model's seeds);
- other: the rest (scanning the folder, binding ports, the workers' hand-over).

The first start on a host gets a new --weights-cache (its copies prepared), the others reuse it.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path

from harness.process import ServerProcess, children

LOADED = re.compile(r"\(([\d.]+)s with warm-up: "
                    r"session ([\d.]+), warm-up ([\d.]+), probe ([\d.]+)\)")
WARMED = re.compile(r"batcher .* warmed .* in ([\d.]+)s")
SERVING = "health SERVING"
STARTING = "starting: models_dir="  # a server's (or worker's) first line about its work
GATE = "health SERVING: every worker serves"
PHASES = ("start-up", "sessions", "warm-up", "probes", "batchers", "other")


def where(server: ServerProcess, since: float, until: float) -> dict[str, float]:
    """The phases of what the server logged between `since` and `until` (time.monotonic())."""
    lines = [line for at, line in zip(server.arrivals, server.lines) if since < at <= until]
    loaded = [tuple(map(float, m.groups())) for line in lines if (m := LOADED.search(line))]
    begun = next((at for at, line in zip(server.arrivals, server.lines)
                  if at > since and STARTING in line), until)
    phases = {"start-up": begun - since,
              "sessions": sum(x[1] for x in loaded), "warm-up": sum(x[2] for x in loaded),
              "probes": sum(x[3] for x in loaded),
              "batchers": sum(float(m.group(1)) for line in lines if (m := WARMED.search(line)))}
    phases["other"] = (until - since) - sum(phases.values())
    return phases


def server_start(models_dir: Path, cache: Path, extra: list[str]) -> dict:
    """One `python -m server` over every model of `models_dir`, until its health says SERVING."""
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--weights-cache",
                       str(cache), *extra) as server:
        server.wait_for_log("listening on", timeout=300)
        ready = server.arrived(SERVING)
        if ready is None:
            raise SystemExit("the server listens but never said health SERVING:\n" + server.log)
        return {"seconds": ready - server.started_at,
                **where(server, server.started_at, ready)}


def worker_replacement(models_dir: Path, cache: Path, extra: list[str]) -> dict:
    """`--workers 2`, one worker SIGKILLed once both serve: until the parent's gate opens again
    (its replacement serves every model)."""
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--workers", "2",
                       "--weights-cache", str(cache), *extra) as server:
        server.wait_for_log(GATE, timeout=300)
        killed_at = _kill_a_worker(server)
        server.wait_for_log(GATE, timeout=300, times=2)
        ready = server.arrived(GATE, after=killed_at)
        return {"seconds": ready - killed_at, **where(server, killed_at, ready)}


def _kill_a_worker(server: ServerProcess) -> float:
    pid = children(server.proc.pid)[-1]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return killed_at


def measure(models_dir: Path, runs: int, extra: list[str]) -> list[dict]:
    """The rows: the first start on a host, the median of `runs` later starts (with their
    slowest), and the median of `runs` worker replacements."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        cache = Path(tmp) / "weights"
        try:
            rows = [{"what": "server, first start on a host", "runs": 1,
                     **server_start(models_dir, cache, extra)}]
            rows.append(_median("server start", [server_start(models_dir, cache, extra)
                                                 for _ in range(runs)]))
            rows.append(_median("worker replacement", [
                worker_replacement(models_dir, cache, extra) for _ in range(runs)]))
        except AssertionError as e:  # harness.process: it exited, or never said it serves
            raise SystemExit(f"cold start: the server did not start or serve: {e}") from None
    for row in rows:
        print(f"  cold start, {row['what']}: {row['seconds']:.2f} s", flush=True)
    return rows


def _median(what: str, runs: list[dict]) -> dict:
    """The run with the median time (its phases add up to it), and the slowest time."""
    middle = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    return {"what": what, "runs": len(runs), **middle,
            "slowest": max(r["seconds"] for r in runs)}


GOALS = {"server start": 5.0, "worker replacement": 3.0}


def report(rows: list[dict], models: int) -> str:
    from cli_text import format_table

    table = format_table(rows, [("what", f"cold start ({models} models)", ""),
                                ("seconds", "seconds", ".2f"), ("runs", "runs", "d"),
                                *((p, p, ".2f") for p in PHASES)])
    verdicts = [f"{r['what']}: {r['seconds']:.2f} s (median of {r['runs']}; slowest "
                f"{r['slowest']:.2f} s; goal <= {GOALS[r['what']]:g} s: "
                f"{'met' if r['seconds'] <= GOALS[r['what']] else 'NOT met'})"
                for r in rows if r["what"] in GOALS]
    return "\n".join([table, *verdicts])
