"""The load generators of the serving benchmarks: h2load for throughput and latency, a Python
driver for what h2load cannot do.

h2load (Debian's nghttp2-client; `make install` installs it as root) replays one serialised gRPC
request, framed with gRPC's 5-byte prefix and sent with content-type application/grpc, from C
callers: one HTTP/2 connection each, one call in flight each, so that they spread over the
workers of `--workers` as separate clients do. Written in C on one thread, it takes a small part
of the cores it shares with the server; asyncio's grpc client took about as much CPU per call as
the server. A gRPC error is an HTTP 200 to h2load, so callers check one reply with a real stub
first and the server's own request counts after (bench/serve.py).

    cell = h2load(port, PATHS["v1"], frame(request), callers=32, seconds=5)

`drive` is the Python driver: closed-loop asyncio callers of any coroutine, for deadlines,
cancellation and attacks.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np

PATHS = {"v1": "/fmnist.v1.Classifier/Classify",
         "v2": "/inference.GRPCInferenceService/ModelInfer"}
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1),
                  ("grpc.max_receive_message_length", -1)]
_COUNTS = re.compile(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout")


class LoadError(RuntimeError):
    """The load generator could not run, or saw a request fail."""


def summarize(latencies: list[float], elapsed: float, images_per_call: int) -> dict:
    ms = np.array(latencies) * 1000
    return {"images_per_s": len(ms) * images_per_call / elapsed, "calls": len(ms),
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def frame(message) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def _ms(seconds: float) -> str:
    """h2load's durations take whole units: "250ms"."""
    return f"{max(1, round(seconds * 1000))}ms"


def require_h2load() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise SystemExit("h2load not found: `make install` installs it as root on Debian "
                         "(package nghttp2-client), or: apt-get install nghttp2-client")
    return found


def h2load(port: int, path: str, body: bytes, callers: int, seconds: float,
           images_per_call: int = 1, warmup: float = 1.0, *,
           headers: Sequence[str] = GRPC_HEADERS, h1: bool = False) -> dict:
    """`callers` connections with one call in flight each, `seconds` after `warmup` seconds;
    img/s and p50/p90/p99 of every call of the measured part. LoadError when any call did not
    end in HTTP 200 (a gRPC error still does: check the server's counts too). `h1`: HTTP/1.1
    keep-alive connections (the HTTP API), with `headers` of its own."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        data, log = Path(tmp) / "request", Path(tmp) / "calls.tsv"
        data.write_bytes(body)
        command = [require_h2load(), "-c", str(callers), "-m", "1", "-t", "1", "-D", _ms(seconds),
                   "--warm-up-time", _ms(warmup), "-d", str(data), "--log-file", str(log),
                   *(["--h1"] if h1 else []), *(a for h in headers for a in ("-H", h)),
                   f"http://127.0.0.1:{port}{path}"]
        out = subprocess.run(command, capture_output=True, text=True, check=False,
                             timeout=seconds + warmup + 120)
        calls = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    counts = _COUNTS.search(out.stdout)
    bad = [c for c in calls if c[1] != "200"]
    if out.returncode != 0 or counts is None or int(counts[1]) != int(counts[2]) or bad or not calls:
        raise LoadError(f"h2load on {path} ({callers} callers): exit {out.returncode}, "
                        f"{len(bad)} non-200 of {len(calls)}:\n{out.stdout[-1500:]}{out.stderr[-500:]}")
    return summarize([int(c[2]) / 1e6 for c in calls], seconds, images_per_call)


async def drive(call: Callable[[], Awaitable], callers: int, seconds: float,
                images_per_call: int) -> dict:
    """`callers` asyncio tasks await `call()` back to back (a closed loop: each waits for its
    answer) for `seconds`, after one warm-up call."""
    await call()  # connect and warm
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at = start + seconds

    async def caller():
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return summarize(latencies, time.perf_counter() - start, images_per_call)
