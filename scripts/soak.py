"""Soak test: a real `python -m server` under mixed traffic at a fixed concurrency, for minutes.

    python scripts/soak.py                           # 10 minutes (SOAK_SECONDS), report each minute
    python scripts/soak.py --seconds 60 --report-seconds 15 --models-dir artifacts/models

Traffic (`KINDS`, weighted): valid PNG, JPEG and raw requests over fmnist.v1 Classify and KServe
v2 ModelInfer (raw UINT8 tensors and encoded BYTES); malformed images; messages over the size
limit; calls the client cancels; deadlines too short to meet; unknown models; and hostile HTTP
requests from scripts/attacks/catalog.py (a brotli bomb, a gzip part, deep JSON, a huge integer,
broken multipart, a 100 KB method, a malformed request line). Each kind lists the status codes
it may end with; any other is "unexpected". Per interval it prints requests, codes, p50/p99
latency of the valid requests, the server's RSS, open file descriptors and threads (from /proc)
and its event loop's stalls (ticks more than 1 s late, from /metrics). It passes (exit 0) when
nothing unexpected happened, the loop never stalled, the server stopped cleanly on SIGTERM, and
RSS, fds and threads stay within 10% of their value at the end of the first interval (fds and
threads: at least +-2, small counts move by one or two). Before the first interval,
--warmup-seconds of the same traffic are not counted.

With --workers N (N `python -m server` workers behind a parent) and --max-worker-rss-mb M (a
worker past M MiB is replaced), the figures are the parent's, plus the largest worker's: its
fds and threads follow the same 10% rule, and its RSS, sampled every second, must stay under M
(+10%: a worker goes on serving while its replacement starts and it retires); without M, under
the first interval's +10%. Workers that are replaced are counted per interval.

To add traffic: write `async def my_kind(ctx) -> None` that makes one gRPC call and lets
grpc.aio.AioRpcError escape (or returns an HTTP status as a string), and add
`Kind("v2-infer", weight, my_kind, codes("OK"))` to KINDS.
The server runs with MALLOC_ARENA_MAX=2 (--malloc-arena-max; 0: glibc's default of 8 per core).
Before failed calls stopped holding their requests in reference cycles, RSS crept ~20% in 10
minutes with the default arenas and ~14% with 2; since then ~0.5 MiB a minute remains, grpc's
own (80 B per call grpc fails while reading it, grpc/grpc#43360), which is why a 20-minute run of
one process fails and `make soak` recycles workers (--max-worker-rss-mb).
Without --models-dir it trains and exports lenet_bn on a small synthetic data set first (~1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import grpc
import numpy as np
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as v2
from inference import grpc_service_pb2_grpc as v2_grpc
from PIL import Image

from harness.models import build_small_models
from harness.process import ServerProcess, by_labels, children, scrape
from scripts.attacks import catalog
from scripts.attacks.wire import http_exchange

MAX_MESSAGE = 1024 * 1024  # the soak server's --max-message-bytes: oversize requests are cheap
TOLERANCE = 0.10


@dataclass
class Context:
    stub: pb_grpc.ClassifierStub
    v2: v2_grpc.GRPCInferenceServiceStub
    model: str
    png: bytes
    jpeg: bytes
    raw: bytes
    rng: random.Random
    target: catalog.Target  # the server as the hostile HTTP requests see it
    aged: bool = False  # the server closes connections by age (Kind.aged)


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    call: Callable[[Context], Awaitable[str | None]]  # None: OK; else an HTTP status
    expected: frozenset  # status code names, or HTTP statuses
    valid: bool = False  # its latency goes into p50/p99
    aged: frozenset = frozenset()  # also expected where the server closes connections by age


def codes(*names: str) -> frozenset:
    return frozenset(names)


def _request(ctx: Context, *images: pb.Image, model: str | None = None) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model or ctx.model, top_k=3, images=list(images))


async def valid_png(ctx):
    await ctx.stub.Classify(_request(ctx, pb.Image(encoded=ctx.png)), timeout=30)


async def valid_jpeg(ctx):
    await ctx.stub.Classify(_request(ctx, *[pb.Image(encoded=ctx.jpeg)] * 4), timeout=30)


async def valid_raw(ctx):
    await ctx.stub.Classify(_request(ctx, *[pb.Image(raw=ctx.raw)] * 8), timeout=30)


async def malformed(ctx):
    data = bytearray(ctx.png if ctx.rng.random() < 0.5 else ctx.jpeg)
    how = ctx.rng.randrange(3)
    if how == 0:
        data = data[:ctx.rng.randrange(1, len(data))]  # truncated
    elif how == 1:
        for _ in range(8):  # bit flips
            data[ctx.rng.randrange(len(data))] ^= 1 << ctx.rng.randrange(8)
    else:
        data = bytearray(ctx.rng.randbytes(ctx.rng.randrange(1, 4096)))  # noise
    await ctx.stub.Classify(_request(ctx, pb.Image(encoded=bytes(data))), timeout=30)


async def oversize(ctx):
    await ctx.stub.Classify(_request(ctx, pb.Image(encoded=b"\0" * (MAX_MESSAGE + 1))), timeout=30)


async def cancelled(ctx):
    call = ctx.stub.Classify(_request(ctx, *[pb.Image(encoded=ctx.jpeg)] * 8), timeout=30)
    await asyncio.sleep(ctx.rng.random() * 0.005)
    call.cancel()
    await call


async def short_deadline(ctx):
    await ctx.stub.Classify(_request(ctx, *[pb.Image(encoded=ctx.png)] * 8), timeout=0.001)


async def unknown_model(ctx):
    await ctx.stub.Classify(_request(ctx, pb.Image(raw=ctx.raw), model="no-such-model"),
                            timeout=30)


async def v2_raw(ctx):
    """KServe v2 ModelInfer with the graph's own input: 4 raw images as one UINT8 tensor."""
    await ctx.v2.ModelInfer(v2.ModelInferRequest(
        model_name=ctx.model, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="image", datatype="UINT8", shape=[4, 1, 28, 28])],
        raw_input_contents=[ctx.raw * 4]), timeout=30)


async def v2_encoded(ctx):
    """KServe v2 ModelInfer with 2 encoded files as BYTES (`image_bytes`, Triton's raw form)."""
    files = (ctx.png, ctx.jpeg)
    await ctx.v2.ModelInfer(v2.ModelInferRequest(
        model_name=ctx.model, inputs=[v2.ModelInferRequest.InferInputTensor(
            name="image_bytes", datatype="BYTES", shape=[len(files)])],
        raw_input_contents=[b"".join(len(f).to_bytes(4, "little") + f for f in files)]),
        timeout=30)


HOSTILE = ("br-bomb", "gzip-part", "deep-json-infer", "huge-integer", "long-part-header",
           "nul-filename", "long-method", "unicode-length")


async def hostile_http(ctx) -> str:
    """One of the cheap attacks of scripts/attacks/catalog.py (small size), from a thread."""
    attack = catalog.BY_NAME[ctx.rng.choice(HOSTILE)]
    reply = await asyncio.to_thread(attack.send, ctx.target, False)
    return reply.status if reply.status in attack.expect else f"{attack.name}:{reply.status}"


def _one_malformed_line(ctx) -> str:
    return http_exchange(ctx.target.host, ctx.target.http_port,
                                 b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n").status


async def malformed_http(ctx) -> str:
    return await asyncio.to_thread(_one_malformed_line, ctx)


KINDS = [
    Kind("png", 4, valid_png, codes("OK"), valid=True),
    Kind("jpeg", 3, valid_jpeg, codes("OK"), valid=True),
    Kind("raw", 3, valid_raw, codes("OK"), valid=True),
    # a bit flip can leave an image decodable (OK); otherwise it is INVALID_ARGUMENT
    Kind("malformed", 2, malformed, codes("OK", "INVALID_ARGUMENT")),
    # Where connections are closed by age (--max-connection-age-seconds, which recycling workers
    # need), grpc may close one while a client is still sending a message it has refused: the
    # unread rest makes the kernel reset the connection, and the refusal is lost (UNAVAILABLE,
    # ~1 in 50 oversize calls with a 2 s age, seen with one process as with workers).
    Kind("oversize", 0.5, oversize, codes("RESOURCE_EXHAUSTED"), aged=codes("UNAVAILABLE")),
    # cancelled before or after the answer; a deadline may pass before the call even starts.
    # Where connections are closed by age, a call caught by its connection's close ends
    # UNAVAILABLE before its 1 ms is up (seen once, in the test's 10 s run with 1 s connection
    # ages and workers replaced throughout); a client retries it like any call on a closing one.
    Kind("cancelled", 1, cancelled, codes("CANCELLED", "OK")),
    Kind("deadline", 1, short_deadline, codes("DEADLINE_EXCEEDED", "OK"),
         aged=codes("UNAVAILABLE")),
    Kind("unknown-model", 0.5, unknown_model, codes("NOT_FOUND")),
    Kind("v2-raw", 2, v2_raw, codes("OK"), valid=True),
    Kind("v2-encoded", 2, v2_encoded, codes("OK"), valid=True),
    # what each attack is answered with (catalog.Attack.expect); anything else is unexpected
    Kind("hostile-http", 0.5, hostile_http, codes("400", "401", "404", "415", "closed")),
    Kind("malformed-http", 0.2, malformed_http, codes("400")),
]


@dataclass
class Interval:
    requests: int = 0
    codes: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)


def process_stats(pid: int) -> dict:
    """RSS (MiB), open fds and threads of `pid`, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return {"rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": threads}


class Sampler:
    """Every second, the workers of the server `pid`: per interval, the largest worker's peak
    RSS and its fds and threads at the end, and how many workers were new."""

    def __init__(self, pid: int):
        self.pid, self.seen, self._lock = pid, set(children(pid)), threading.Lock()
        self._peak, self._new = 0.0, 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def _sample(self) -> list[dict]:
        stats = []
        for child in children(self.pid):
            try:
                stats.append(process_stats(child))
            except (OSError, AttributeError):  # exited meanwhile
                continue
            with self._lock:
                self._new += child not in self.seen
                self.seen.add(child)
        with self._lock:
            self._peak = max([self._peak] + [s["rss_mib"] for s in stats])
        return stats

    def take(self) -> dict:
        """The interval's figures; the next interval starts now."""
        stats = self._sample()
        with self._lock:
            row = {"workers": len(stats), "worker_rss_mib_peak": self._peak,
                   "worker_fds": max((s["fds"] for s in stats), default=0),
                   "worker_threads": max((s["threads"] for s in stats), default=0),
                   "workers_started": self._new}
            self._peak, self._new = 0.0, 0
        return row

    def stop(self) -> None:
        self._stop.set()


def sample_images() -> tuple[bytes, bytes, bytes]:
    """A 200x150 PNG and JPEG of a dark object on a light background, and a raw 28x28."""
    rng = np.random.default_rng(0)
    a = np.full((150, 200), 235, np.uint8)
    a[30:120, 50:150] = rng.integers(0, 90, (90, 100), dtype=np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(a).save(png, format="PNG")
    Image.fromarray(a).convert("RGB").save(jpeg, format="JPEG", quality=90)
    return png.getvalue(), jpeg.getvalue(), rng.integers(0, 255, 784, dtype=np.uint8).tobytes()


async def worker(ctx: Context, stop: asyncio.Event, intervals: list[Interval]) -> None:
    kinds, weights = KINDS, [k.weight for k in KINDS]
    while not stop.is_set():
        kind = ctx.rng.choices(kinds, weights)[0]
        started = time.perf_counter()
        try:
            code = await kind.call(ctx) or "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        except asyncio.CancelledError:
            if stop.is_set():
                return
            code = "CANCELLED"
        interval = intervals[-1]
        interval.requests += 1
        interval.codes[code] += 1
        if code not in (kind.expected | kind.aged if ctx.aged else kind.expected):
            interval.unexpected[f"{kind.name}:{code}"] += 1
        elif kind.valid and code == "OK":
            interval.latencies.append(time.perf_counter() - started)


def start_server(models_dir: Path, extra: list[str], malloc_arena_max: int) -> ServerProcess:
    """`python -m server` with gRPC, HTTP and /metrics on free ports."""
    return ServerProcess(
        "--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
        "--max-message-bytes", str(MAX_MESSAGE), "--grace", "10", *extra, metrics=True,
        http=True, env={"MALLOC_ARENA_MAX": str(malloc_arena_max)} if malloc_arena_max else None)


def stop_server(server: ServerProcess) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return -9


def loop_stalls(metrics_port: int) -> float:
    """Ticks of the server's event loop that ran more than 1 s late, so far."""
    samples = scrape(metrics_port)
    count = by_labels(samples, "fmnist_event_loop_lag_seconds_count").get((), 0.0)
    return count - by_labels(samples, "fmnist_event_loop_lag_seconds_bucket", "le").get(
        ("1.0",), 0.0)


def build_model(workdir: Path) -> Path:
    return build_small_models(workdir, ("lenet_bn",))


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


async def run(args, server: ServerProcess, port: int, model: str) -> list[dict]:
    """The traffic, from --concurrency callers over --connections connections, and one row per
    interval after the warm-up."""
    pid = server.proc.pid
    target = catalog.Target("127.0.0.1", port, server.http_port, model=model)
    png, jpeg, raw = sample_images()
    sampler = Sampler(pid) if args.workers != "1" or args.max_worker_rss_mb else None
    intervals, stop = [Interval()], asyncio.Event()
    options = [("grpc.max_send_message_length", 4 * MAX_MESSAGE),
               ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
                for _ in range(args.connections)]
    stubs = [(pb_grpc.ClassifierStub(c), v2_grpc.GRPCInferenceServiceStub(c)) for c in channels]
    tasks = [asyncio.create_task(worker(Context(
        *stubs[i % len(stubs)], model, png, jpeg, raw, random.Random(args.seed + i), target,
        ages_connections(args)), stop, intervals)) for i in range(args.concurrency)]
    try:
        return await measure(args, server, intervals, sampler)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        if sampler is not None:
            sampler.stop()


async def measure(args, server: ServerProcess, intervals: list[Interval],
                  sampler: Sampler | None) -> list:
    await asyncio.sleep(args.warmup_seconds)  # traffic not counted: sessions, arenas, caches
    intervals.append(Interval())
    stalls = await asyncio.to_thread(loop_stalls, server.metrics_port)
    if sampler is not None:
        sampler.take()  # the warm-up's figures go
    rows, started = [], time.monotonic()
    for i in range(max(1, round(args.seconds / args.report_seconds))):
        await asyncio.sleep(started + (i + 1) * args.report_seconds - time.monotonic())
        intervals.append(Interval())
        done = intervals[-2]
        stalls, before = await asyncio.to_thread(loop_stalls, server.metrics_port), stalls
        rows.append({"interval": i + 1, "requests": done.requests, "codes": dict(done.codes),
                     "unexpected": dict(done.unexpected),
                     "p50_ms": percentile(done.latencies, 50),
                     "p99_ms": percentile(done.latencies, 99), "loop_stalls": stalls - before,
                     **process_stats(server.proc.pid),
                     **(sampler.take() if sampler is not None else {})})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ages_connections(args: argparse.Namespace) -> bool:
    """Whether the server closes connections by age: recycling workers, or the flag."""
    age = [a for a in args.server_args if a.startswith("--max-connection-age-seconds")]
    return args.max_worker_rss_mb is not None or bool(age)


def judge(rows: list[dict], max_worker_rss_mb: float | None = None) -> list[str]:
    """What failed: unexpected codes; RSS/fds/threads drifting from the first interval (the
    server's, or with workers the parent's and the largest worker's fds and threads); a
    worker's RSS over --max-worker-rss-mb (+10%), or without it drifting like the rest."""
    problems = [f"interval {r['interval']}: unexpected {r['unexpected']}"
                for r in rows if r["unexpected"]]
    problems += [f"interval {r['interval']}: the event loop ran over 1 s late {r['loop_stalls']:g}"
                 " time(s)" for r in rows if r.get("loop_stalls")]
    workers = "workers" in rows[0]
    drifting = [("rss_mib", 0.0), ("fds", 2), ("threads", 2)]
    if workers:
        drifting += [("worker_fds", 2), ("worker_threads", 2)]
        if max_worker_rss_mb is None:
            drifting.append(("worker_rss_mib_peak", 0.0))
    base = rows[0]
    for r in rows[1:]:
        for key, floor in drifting:
            allowed = max(base[key] * TOLERANCE, floor)
            if abs(r[key] - base[key]) > allowed:
                problems.append(f"interval {r['interval']}: {key} {r[key]} is more than "
                                f"{allowed:g} from the first interval's {base[key]}")
    if workers and max_worker_rss_mb is not None:
        bound = max_worker_rss_mb * (1 + TOLERANCE)
        problems += [f"interval {r['interval']}: a worker reached {r['worker_rss_mib_peak']} MiB, "
                     f"over --max-worker-rss-mb {max_worker_rss_mb:g} + 10%" for r in rows
                     if r["worker_rss_mib_peak"] > bound]
    return problems


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)),
                   help="how long to run ($SOAK_SECONDS)")
    p.add_argument("--report-seconds", type=float, default=60.0, help="length of an interval")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight at once")
    p.add_argument("--connections", type=int, default=1,
                   help="connections they share (with --workers, each lands on one worker)")
    p.add_argument("--warmup-seconds", type=float, default=30.0,
                   help="traffic before the first interval, not counted")
    p.add_argument("--models-dir", type=Path,
                   help="models to serve (default: train and export lenet_bn on synthetic data)")
    p.add_argument("--model", default="lenet_bn", help="the model the valid requests use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malloc-arena-max", type=int, default=2,
                   help="MALLOC_ARENA_MAX for the server; 0: glibc's default (8 per core)")
    p.add_argument("--workers", default="1",
                   help="the server's --workers (auto: one per usable core)")
    p.add_argument("--max-worker-rss-mb", type=float,
                   help="the server's --max-worker-rss-mb, and the bound on every worker's RSS")
    p.add_argument("--json", type=Path, help="also write the rows and the verdict here")
    p.add_argument("server_args", nargs="*", help="more `python -m server` flags (after --)")
    return p


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        models_dir = args.models_dir or build_model(Path(workdir))
        server = start_server(models_dir, [*worker_flags(args), *args.server_args],
                              args.malloc_arena_max)
        try:
            port = server.wait_for_port()
            rows = asyncio.run(run(args, server, port, args.model))
        finally:
            rc = stop_server(server)
    problems = judge(rows, args.max_worker_rss_mb)
    if rc != 0:
        problems.append(f"the server exited {rc} on SIGTERM")
    tracebacks = [i for i, line in enumerate(server.lines) if "Traceback" in line]
    if tracebacks:
        start = max(0, tracebacks[0] - 3)
        problems.append("the server logged a traceback:\n" + "\n".join(
            server.lines[start:start + 40]))
    total = Counter()
    for r in rows:
        total.update(r["codes"])
    verdict = {"passed": not problems, "problems": problems, "requests": sum(total.values()),
               "codes": dict(total), "cpu": _cpu(), "seconds": args.seconds,
               "concurrency": args.concurrency, "warmup_seconds": args.warmup_seconds,
               "malloc_arena_max": args.malloc_arena_max, "workers": args.workers,
               "max_worker_rss_mb": args.max_worker_rss_mb,
               "workers_started": sum(r.get("workers_started", 0) for r in rows)}
    print(json.dumps(verdict), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **verdict}, indent=1))
    if problems:
        print("\n".join(["soak FAILED:", *problems, "server log tail:", *server.lines[-20:]]),
              file=sys.stderr)
    return 0 if not problems else 1


def worker_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--workers", args.workers] if args.workers != "1" else []
    if args.max_worker_rss_mb is not None:
        flags += ["--max-worker-rss-mb", f"{args.max_worker_rss_mb:g}"]
    return flags


def _cpu() -> str:
    try:
        name = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        name = "unknown"
    return f"{name} x{os.cpu_count()}"


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
