"""`make bench-serve`: fmnist-serve against its two ceilings, in-process onnxruntime and a bare
grpc.aio server, in one run; then three attacks on the server.

Per model (default lenet_bn and resnet18; the model's sample images as raw 28x28 pixels, so
decoding is not timed):
- in-process: one thread calls server/models/runner.py's OnnxRunner back to back at batch 1 and
  at --max-batch, with one onnxruntime thread per usable core (measured before and after the
  server cells; the mean is reported, so drifting machine load hits both sides);
- a bare grpc.aio server answering Classify with a fixed reply (bench/bare.py: the Python
  ceiling), one process and two on one port (SO_REUSEPORT); measured once, shown for each model;
- fmnist-serve (`python -m server`, its own processes) over fmnist.v1 Classify and KServe v2
  ModelInfer at 1, 8, 32 and 64 single-image callers, with --workers 1 and auto; 4 callers of
  --max-batch images (fmnist.v1, one worker); and over HTTP with the first --workers setting, at
  the same caller counts (bench/http_load.py: KServe v2 JSON tensors, v2 binary tensor data, PNG
  files to /v1/models/{m}:classify as multipart/form-data);
- tracing's cost (--tracing, default off 0.01 1.0): fmnist.v1 at --tracing-callers (1 and 32),
  one worker, a server of its own for each setting, side by side: tracing off, and on at each
  sampling ratio (OTEL_TRACES_SAMPLER=traceidratio), exporting over OTLP/gRPC to a stand-in
  collector in this process (bench/collector.py: it counts the exports, decodes nothing).
- cold start (bench/cold_start.py; --cold-start-runs): seconds to SERVING with every model of
  --models-dir, and a --workers 2 worker's replacement, and where the time goes (goals: 5 s and
  3 s on 2 cores).
Load comes from h2load (bench/load.py: one connection per caller, HTTP/1.1 for the HTTP API).
Every cell first checks one reply with a real client, and after it the server's own
fmnist_requests_total: a request that did not end OK fails the run (a gRPC error is an HTTP 200
to h2load).

Printed per cell: img/s, p50/p90/p99 per call; then the ratios the targets are stated in:
- 32 callers, fmnist.v1, one worker / the lower ceiling at 32 callers: the bare server (>= 0.85,
  where the front-end is the limit: small models) or in-process at max batch (>= 0.95);
- 1 caller's p50 - in-process batch-1 p50                          (<= 1 ms)
- fmnist.v1 / KServe v2 at 32 callers, one worker                   (within 5%)
- `auto` workers / one worker at 32 callers                         (reported; `make bench-peer`
  holds auto workers to >= 1.2x Triton's core)
- each HTTP kind / KServe v2 over gRPC at 32 callers, one worker     (reported)
- tracing at ratio 1.0 / tracing off at 32 callers, lenet_bn        (>= 0.90); other ratios and
  models reported; tracing off / the plain fmnist.v1 cell (two servers alike: the noise)
The CPU, its ISA flags and the load averages before and after are printed and written with the
figures: rerun on a quiet machine (`uptime`) before quoting them.

Attacks (the first model, one worker): 200 streams that open and never send a request, while
health, ListModels and Classify are timed (goal < 100 ms each); requests of 16 tiny-on-the-wire
4096x4096 16-bit PNGs and of 2 such PNGs, 32 in flight, with the server's resident memory before
and at its peak; five 64-image calls followed by single-image calls with a 100 ms deadline.

    python -m bench.serve [--models resnet18 lenet_bn] [--seconds 5] [--workers 1 auto]

Nothing here imports torch. Results also go to $ARTIFACTS/bench/serve.json (bench/results.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

import model_contract as contract
from bench import cold_start, http_load, results
from bench.load import OWN_CONNECTION, PATHS, drive, frame, h2load, require_h2load  # noqa: F401
from bench.neighbours import Neighbours, flag

# drive and OWN_CONNECTION are also imported from here (scripts/profile_serve.py, tests).

REPO = Path(__file__).resolve().parent.parent
CLASSIFY = PATHS["v1"]
BARE = "bare grpc.aio"
TRACED = "fmnist-serve traced"
PROTOCOLS = ("-", *PATHS, *(f"http {kind}" for kind in http_load.KINDS))  # the tables' order


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME", default=["lenet_bn", "resnet18"],
                   help="models to measure (default: lenet_bn resnet18)")
    p.add_argument("--models-dir", type=Path,
                   default=contract.default_models_dir(),
                   help="exported models (default: $ARTIFACTS/models or artifacts/models)")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="where bench/serve.json is written (default: $ARTIFACTS or artifacts)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--callers", nargs="+", type=int, default=[1, 8, 32, 64], metavar="N",
                   help="concurrent single-image callers (default: 1 8 32 64)")
    p.add_argument("--workers", nargs="+", default=["1", "auto"], metavar="N",
                   help="the server's --workers, one set of cells each (default: 1 auto)")
    p.add_argument("--protocols", nargs="+", choices=tuple(PATHS), default=list(PATHS),
                   help="v1: fmnist.v1 Classify; v2: KServe v2 ModelInfer (default: both)")
    p.add_argument("--http", nargs="*", choices=http_load.KINDS, default=list(http_load.KINDS),
                   metavar="KIND", help="HTTP API cells with the first --workers setting: json "
                   "(KServe v2 JSON tensors), binary (v2 binary tensor data), multipart (PNG files "
                   "to /v1/models/{m}:classify); default: all three; --http alone: none")
    p.add_argument("--batch-callers", type=int, default=4,
                   help="concurrent callers of --max-batch images (default: 4; 0: none)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default: 32)")
    p.add_argument("--delay-ms", type=float, default=2.0,
                   help="the server's --max-queue-delay-ms (default: 2)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="measuring time per cell, after 1 s of warm-up (default: 5)")
    p.add_argument("--tracing", nargs="*", default=["off", "0.01", "1.0"], metavar="RATIO",
                   help="tracing cells, one server each: off, or a sampling ratio (default: off "
                        "0.01 1.0; --tracing alone: none)")
    p.add_argument("--tracing-callers", nargs="+", type=int, default=[1, 32], metavar="N",
                   help="callers of the tracing cells (default: 1 32)")
    p.add_argument("--cold-start-runs", type=int, default=3, metavar="N",
                   help="cold start: seconds to SERVING with every model of --models-dir, and a "
                        "--workers 2 worker's replacement, N runs each (default: 3; 0: none)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare grpc.aio server")
    p.add_argument("--no-attacks", action="store_true", help="skip the three attacks")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m server` (repeatable, e.g. --server-arg=--spinning)")
    return p


# --- processes -----------------------------------------------------------------------------------

class ServerProcess:
    """`python -m server --port 0` over a folder holding only the chosen models; `metrics`:
    /metrics on a free port (`metrics_port`); `http`: the HTTP API on one (`http_port`), else
    off."""

    def __init__(self, models: dict[str, Path], device: str, extra: list[str],
                 metrics: bool = False, http: bool = False, env: dict[str, str] | None = None):
        """`models`: name -> the version folder to serve. Linked (or copied) into a folder of
        their own: the server refuses symlinks that lead out of its models folder. `env`: the
        OTEL_* variables it gets (none of this process's: tracing is off without them)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
        for name, version_dir in models.items():
            target = Path(self._tmp.name) / name / version_dir.name
            try:
                shutil.copytree(version_dir, target, copy_function=os.link)
            except OSError:  # another filesystem: copy
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(version_dir, target)
        self.metrics_port = free_port() if metrics else 0
        self.http_port = free_port() if http else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--models-dir", self._tmp.name, "--port", "0",
             "--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port),
             "--device", device, "--log-format", "json", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
                 **(env or {})})
        self.port: int | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=2000)
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("message", "").startswith("listening on"):
                self.port = int(record["port"])
                self._ready.set()
        self._ready.set()

    def wait(self, timeout: float = 600) -> int:
        self._ready.wait(timeout)
        if self.port is None:
            raise SystemExit("the server did not start:\n" + "\n".join(list(self.log)[-20:]))
        return self.port

    def memory_mb(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak so far) of the server process, in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def counts(self) -> collections.Counter:
        """fmnist_requests_total by status code, from the server's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=30) as response:
            text = response.read().decode()
        out = collections.Counter()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "fmnist_requests_total":
                    out[s.labels["code"]] += s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self._tmp.cleanup()
        return rc


class BareServers:
    """`processes` bench/bare.py servers on one port (SO_REUSEPORT when more than one)."""

    def __init__(self, processes: int):
        self.procs, self.port = [], 0
        try:
            for _ in range(processes):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.bare", "--port", str(self.port),
                     *(["--reuse-port"] if processes > 1 else [])],
                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                line = self.procs[-1].stdout.readline()
                if not line.startswith("listening on"):
                    raise SystemExit(f"bench/bare.py did not start: {line}"
                                     f"{self.procs[-1].stdout.read()}")
                self.port = int(line.rsplit(":", 1)[1])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- models and requests -------------------------------------------------------------------------

def pick_models(models_dir: Path, names: list[str] | None) -> dict[str, tuple[int, Path]]:
    """name -> (newest version, its model folder), for the named models or all of them."""
    from server.models.scan import scan
    try:
        found = scan(models_dir)
    except OSError:
        found = {}
    if not found:
        raise SystemExit(f"no exported models in {models_dir}: run `make train export` first "
                         "(e.g. MODELS=\"lenet_bn resnet18\" make train export), or pass --models-dir")
    names = names or sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"not exported in {models_dir}: {', '.join(missing)} (there: "
                         f"{', '.join(sorted(found))}); train and export them first "
                         f"(make train export MODELS=\"{' '.join(missing)}\")")
    return {n: (max(found[n]), models_dir / n) for n in names}


def sample_images() -> tuple[np.ndarray, list[bytes]]:
    """The 10 sample images: uint8 [10, 28, 28] pixels and their PNG files."""
    from PIL import Image
    files = sorted((REPO / "samples").glob("*.png"))
    return (np.stack([np.asarray(Image.open(f)) for f in files]), [f.read_bytes() for f in files])


def batch_of(pixels: np.ndarray, n: int) -> np.ndarray:
    return pixels[np.arange(n) % len(pixels)][:, None].copy()  # uint8 [n, 1, 28, 28]


def requests_for(model: str, version: int, pixels: np.ndarray, n: int = 1) -> dict:
    """`n` images as one fmnist.v1 ClassifyRequest and one KServe v2 ModelInferRequest (the
    graph's own uint8 input, the probabilities output)."""
    from fmnist.v1 import classifier_pb2 as pb
    from inference import grpc_service_pb2 as v2

    images = batch_of(pixels, n)
    v1 = pb.ClassifyRequest(model=model, version=version,
                            images=[pb.Image(raw=row.tobytes()) for row in images[:, 0]])
    infer = v2.ModelInferRequest(model_name=model, model_version=str(version))
    infer.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    infer.outputs.add(name="probabilities")
    infer.raw_input_contents.append(images.tobytes())
    return {"v1": v1, "v2": infer}


def check_reply(port: int, protocol: str, request) -> None:
    """One call with a real stub (h2load counts a gRPC error as an HTTP 200); an HTTP `request`
    (path, body, headers) once with urllib, to see its answer hold results."""
    if protocol.startswith("http"):
        path, body, headers = request
        call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers)
        with urllib.request.urlopen(call, timeout=60) as answer:
            text = answer.read()
        if b"probabilities" not in text and b"classifications" not in text:
            raise SystemExit(f"{protocol}: an answer without results: {text[:300]!r}")
        return
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from inference import grpc_service_pb2 as v2

    reply = pb.ClassifyResponse if protocol == "v1" else v2.ModelInferResponse
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        call = channel.unary_unary(PATHS[protocol],
                                   request_serializer=type(request).SerializeToString,
                                   response_deserializer=reply.FromString)
        answer = call(request, timeout=60)
    if not (answer.classifications if protocol == "v1" else answer.raw_output_contents):
        raise SystemExit(f"{protocol}: an answer without results: {answer}")


def _list_models(port: int):
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)


# --- cells ---------------------------------------------------------------------------------------

def in_process_cells(models: dict, pixels: np.ndarray, args, threads: int) -> dict:
    """(model, batch) -> in-process figures; a second call's figures are averaged in."""
    from server.models.providers import ProviderPolicy
    from server.models.runner import OnnxRunner

    policy, out = ProviderPolicy(args.device), {}
    for name, (version, model_dir) in models.items():
        runner = OnnxRunner(model_dir / str(version) / contract.MODEL_FILE, policy.requested(),
                            threads, spinning="--spinning" in args.server_arg)
        for b in (1, args.max_batch):
            images = batch_of(pixels, b)
            out[(name, b)] = {"provider": runner.provider, **in_process(
                lambda runner=runner, images=images: runner.run(images), args.seconds / 2, b)}
        runner.close()
    return out


def in_process(run, seconds: float, images_per_call: int) -> dict:
    from bench.load import summarize
    run()  # warm
    latencies = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds or not latencies:
        run()
        latencies.append(time.perf_counter() - now)
    return summarize(latencies, time.perf_counter() - start, images_per_call)


def bare_cells(request, args) -> list[dict]:
    rows = []
    for processes in (1, 2):
        bare = BareServers(processes)
        try:
            check_reply(bare.port, "v1", request)
            for callers in args.callers:
                cell = h2load(bare.port, CLASSIFY, frame(request), callers, args.seconds,
                              warmup=min(1.0, args.seconds))
                rows.append({"model": "-", "side": BARE, "protocol": "v1",
                             "workers": str(processes), "batch": 1, "callers": callers, **cell})
                _progress(rows[-1])
        finally:
            bare.stop()
    return rows


def server_cells(server: ServerProcess, models: dict, pixels, args, workers: str) -> list[dict]:
    """Every protocol and caller count for every model, on one running server."""
    rows = []
    for name, (version, _) in models.items():
        single = requests_for(name, version, pixels)
        cells = [(p, 1, c) for p in args.protocols for c in args.callers]
        if workers == args.workers[0] and args.batch_callers and "v1" in args.protocols:
            cells.append(("v1", args.max_batch, args.batch_callers))
        if workers == args.workers[0]:
            _, pngs = sample_images()
            for kind in args.http:
                single[f"http {kind}"] = http_load.payload(kind, name, pixels[:, None], pngs, 1)
                cells += [(f"http {kind}", 1, c) for c in args.callers]
        for protocol, batch, callers in cells:
            request = single[protocol] if batch == 1 else requests_for(
                name, version, pixels, batch)[protocol]
            rows.append({"model": name, "side": "fmnist-serve", "protocol": protocol,
                         "workers": workers, "batch": batch, "callers": callers,
                         **measured(server, protocol, request, callers, args.seconds, batch)})
            _progress(rows[-1])
    return rows


def measured(server: ServerProcess, protocol: str, request, callers: int, seconds: float,
             batch: int) -> dict:
    """One h2load cell, with a stub's reply checked first and the server's counts after: every
    call OK, but for the calls in flight when h2load stops (it resets them: CANCELLED)."""
    http = protocol.startswith("http")
    port = server.http_port if http else server.port
    check_reply(port, protocol, request)
    if http:
        path, body, headers = request
        load = {"path": path, "body": body, "h1": True,
                "headers": [f"{k}: {v}" for k, v in headers.items()]}
    else:
        load = {"path": PATHS[protocol], "body": frame(request)}
    before = server.counts()
    beside = Neighbours(server.proc.pid)
    cell = h2load(port, callers=callers, seconds=seconds, images_per_call=batch,
                  warmup=min(1.0, seconds), **load)
    cell["others_cores"] = beside.cores()
    after = server.counts()
    failed = {code: after[code] - before[code] for code in after
              if code != "OK" and after[code] > before[code]}
    if failed.get("CANCELLED", 0) <= callers:
        failed.pop("CANCELLED", None)
    if failed or after["OK"] - before["OK"] < cell["calls"]:
        raise SystemExit(f"{protocol} {callers} callers: the server counted {failed or 'too few'} "
                         f"(OK {after['OK'] - before['OK']:.0f} for {cell['calls']} calls)")
    return cell


def _progress(row: dict) -> None:
    tracing = f" tracing={row['tracing']} ({row['exports']} exports)" if "tracing" in row else ""
    print(f"  {row['model']} {row['side']} {row['protocol']} workers={row['workers']}{tracing}: "
          f"{row['callers']} caller(s) of {row['batch']}: {row['images_per_s']:.0f} img/s, "
          f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms{flag(row)}", flush=True)


# --- attacks -------------------------------------------------------------------------------------

def open_idle_streams(channel, n: int, release: threading.Event, timeout: float = 60) -> list:
    """`n` Classify calls that send their headers and then nothing (the request iterator blocks
    until `release`), as a slow or malicious client does. Returns their futures."""
    from fmnist.v1 import classifier_pb2 as pb
    call = channel.stream_unary(CLASSIFY, request_serializer=pb.ClassifyRequest.SerializeToString,
                                response_deserializer=pb.ClassifyResponse.FromString)

    def never():
        release.wait()
        return
        yield  # a generator that ends without yielding once released

    return [call.future(never(), timeout=timeout) for _ in range(n)]


@contextlib.contextmanager
def idle_streams(port: int, streams: int, connections: int = 4, timeout: float = 60):
    """`streams` idle Classify calls (open_idle_streams) spread over `connections` connections
    of their own to 127.0.0.1:`port`; yields their futures, and ends them all on exit."""
    import grpc
    release = threading.Event()
    attackers = [grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
                 for _ in range(connections)]
    idle = [f for ch in attackers
            for f in open_idle_streams(ch, streams // connections, release, timeout=timeout)]
    try:
        yield idle
    finally:
        release.set()
        for f in idle:
            f.cancel()
        for ch in attackers:
            ch.close()


def attack_idle_streams(port: int, model: str, streams: int = 200) -> dict:
    """Open `streams` Classify calls that never send their request; time health, ListModels and
    Classify on another connection meanwhile."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with idle_streams(port, streams, timeout=120) as idle:
        time.sleep(1.0)  # let them all open
        out: dict = {"attack": "idle streams", "streams": len(idle)}
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as victim:
            grpc.channel_ready_future(victim).result(timeout=10)
            checks = {
                "health": lambda: health_pb2_grpc.HealthStub(victim).Check(
                    health_pb2.HealthCheckRequest(), timeout=2),
                "list_models": lambda: pb_grpc.ClassifierStub(victim).ListModels(
                    pb.ListModelsRequest(), timeout=2),
                "classify": lambda: pb_grpc.ClassifierStub(victim).Classify(pb.ClassifyRequest(
                    model=model, images=[pb.Image(raw=bytes(784))]), timeout=2)}
            for name, check in checks.items():
                out.update(_timed(name, check))
        out["streams_still_open"] = sum(not f.done() for f in idle)
    return out


def _timed(name: str, check) -> dict:
    """20 calls of `check`: p50 and max latency of those that answered, and the errors."""
    import grpc
    latencies, errors = [], 0
    for _ in range(20):
        t0 = time.perf_counter()
        try:
            check()
            latencies.append(time.perf_counter() - t0)
        except grpc.RpcError:
            errors += 1
    return {f"{name}_p50_ms": float(np.median(latencies) * 1000) if latencies else None,
            f"{name}_max_ms": float(max(latencies) * 1000) if latencies else None,
            f"{name}_errors": errors}


def big_png(side: int = 4096) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 30000, np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def attack_amplification(port: int, model: str, server: ServerProcess) -> dict:
    """32 requests in flight: half with 16 4096x4096 16-bit PNGs (~40 kB each on the wire), half
    with 2; outcome codes and the server's memory."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    png = big_png()
    requests = [pb.ClassifyRequest(model=model, images=[pb.Image(encoded=png)] * n)
                for n in (16, 2)] * 16
    before = server.memory_mb("VmRSS")
    codes: dict[str, int] = {}
    started = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        futures = [stub.Classify.future(r, timeout=300) for r in requests]
        for f in futures:
            try:
                f.result()
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1
    return {"attack": "amplification", "png_bytes": len(png), "requests": len(requests),
            "codes": codes, "seconds": time.perf_counter() - started, "rss_before_mb": before,
            "rss_peak_mb": server.memory_mb("VmHWM"), "rss_after_mb": server.memory_mb("VmRSS")}


def attack_small_after_big(port: int, model: str) -> dict:
    """Five 64-image calls, then 20 single-image calls with a 100 ms deadline."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        big = pb.ClassifyRequest(model=model, images=[pb.Image(raw=bytes(784))] * 64)
        for _ in range(5):
            stub.Classify(big, timeout=120)
        small = pb.ClassifyRequest(model=model, images=[pb.Image(raw=bytes(784))])
        codes: dict[str, int] = {}
        for _ in range(20):
            try:
                stub.Classify(small, timeout=0.1)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1
    return {"attack": "small after big", "codes": codes}


def attacks(port: int, model: str, server: ServerProcess) -> list[dict]:
    print(f"attacks on {model} ...", flush=True)
    return [attack_idle_streams(port, model), attack_amplification(port, model, server),
            attack_small_after_big(port, model)]


# --- report --------------------------------------------------------------------------------------

def what(row: dict) -> str:
    if row["side"] == "in-process":
        return f"in-process onnxruntime, batch {row['batch']}"
    if row["side"] == TRACED:
        tracing = "off" if row["tracing"] == "off" else f"sampling {row['tracing']}"
        return f"fmnist-serve v1, workers 1, tracing {tracing}"
    if row["side"] == BARE:
        return f"{BARE}, {row['workers']} process{'es' if row['workers'] != '1' else ''}"
    batch = f" of {row['batch']}" if row["batch"] > 1 else ""
    protocol = row["protocol"].replace("http", "HTTP")
    return f"fmnist-serve {protocol}, workers {row['workers']}{batch}"


def format_table(rows: list[dict]) -> str:
    header = ("", "callers", "img/s", "p50 ms", "p90 ms", "p99 ms", "others' cores")
    table = [header] + [(what(r), str(r["callers"]), f"{r['images_per_s']:.0f}",
                         f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['others_cores']:.2f}" if "others_cores" in r else "-")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def ratios(rows: list[dict], model: str, max_batch: int) -> list[dict]:
    """The target ratios for one model, from its rows and the bare server's."""
    def cell(side: str, protocol: str, workers: str, batch: int, callers: int) -> dict | None:
        return next((r for r in rows if (r["side"], r["protocol"], r["workers"], r["batch"],
                                         r["callers"]) == (side, protocol, workers, batch, callers)
                     and r["model"] in (model, "-")), None)

    local1, local_max = (cell("in-process", "-", "-", b, 1) for b in (1, max_batch))
    v1, v2 = (cell("fmnist-serve", p, "1", 1, 32) for p in ("v1", "v2"))
    one, auto = cell("fmnist-serve", "v1", "1", 1, 1), cell("fmnist-serve", "v1", "auto", 1, 32)
    bare = cell(BARE, "v1", "1", 1, 32)
    out = []

    def add(name: str, value: float, target: str) -> None:
        out.append({"model": model, "ratio": name, "value": value, "target": target})

    if v1 and bare and local_max:
        front_end = bare["images_per_s"] < local_max["images_per_s"]
        add("32 callers v1 / bare grpc.aio (1 process)", v1["images_per_s"] / bare["images_per_s"],
            ">= 0.85" if front_end else "-")
        add(f"32 callers v1 / in-process batch {max_batch}",
            v1["images_per_s"] / local_max["images_per_s"], "-" if front_end else ">= 0.95")
    if one and local1:
        add("1 caller p50 - in-process batch-1 p50 (ms)", one["p50_ms"] - local1["p50_ms"], "<= 1")
    if v1 and v2:
        add("32 callers v1 / v2", v1["images_per_s"] / v2["images_per_s"], "0.95..1.05")
    if v1 and auto:
        add("32 callers v1, auto workers / 1 worker", auto["images_per_s"] / v1["images_per_s"], "-")
    for kind in ("json", "binary", "multipart"):
        http = cell("fmnist-serve", f"http {kind}", "1", 1, 32)
        if http and v2:
            add(f"32 callers HTTP {kind} / KServe v2 gRPC", http["images_per_s"] / v2["images_per_s"],
                "-")
    out += tracing_ratios(rows, model, v1)
    return out


def tracing_ratios(rows: list[dict], model: str, v1: dict | None) -> list[dict]:
    """Tracing's cost for one model: each ratio's img/s at 32 callers over tracing off's (the
    goal: >= 0.90 at 1.0 for lenet_bn, whose requests cost the least, so spans weigh the most),
    its 1-caller p50 beside off's, and off over the plain v1 cell (the noise between servers)."""
    def traced(setting: str, callers: int) -> dict | None:
        return next((r for r in rows if r["side"] == TRACED and r["model"] == model
                     and r["tracing"] == setting and r["callers"] == callers), None)

    out = []
    off32, off1 = traced("off", 32), traced("off", 1)
    for setting in sorted({r["tracing"] for r in rows if r["side"] == TRACED} - {"off"}):
        on32, on1 = traced(setting, 32), traced(setting, 1)
        if on32 and off32:
            target = ">= 0.90" if model == "lenet_bn" and float(setting) == 1.0 else "-"
            out.append({"model": model, "ratio": f"32 callers, tracing {setting} / off",
                        "value": on32["images_per_s"] / off32["images_per_s"], "target": target})
        if on1 and off1:
            out.append({"model": model, "ratio": f"1 caller p50, tracing {setting} - off (ms)",
                        "value": on1["p50_ms"] - off1["p50_ms"], "target": "-"})
    if off32 and v1:
        out.append({"model": model, "ratio": "32 callers, tracing off / the v1 cell (noise)",
                    "value": off32["images_per_s"] / v1["images_per_s"], "target": "-"})
    return out


def met(ratio: dict) -> bool | None:
    target = ratio["target"]
    if target == "-":
        return None
    if ".." in target:
        low, high = map(float, target.split(".."))
        return low <= ratio["value"] <= high
    op, bound = target.split()
    return ratio["value"] >= float(bound) if op == ">=" else ratio["value"] <= float(bound)


def report(rows: list[dict], found: list[dict], models: dict) -> None:
    for name in models:
        mine = [r for r in rows if r["model"] in (name, "-")]
        print(f"\n{name}\n{format_table(mine)}")
    print()
    for r in found:
        verdict = {None: "no target here", True: "met", False: "NOT met"}[met(r)]
        print(f"{r['model']}: {r['ratio']} = {r['value']:.2f} (target {r['target']}: {verdict})")


# --- main ----------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    from server.workers.cores import usable_cores

    require_h2load()
    models = pick_models(args.models_dir, args.models)
    pixels, _ = sample_images()
    cores = usable_cores()
    load_before = results.announce_machine(cores)
    print(f"models: {', '.join(f'{n} v{v}' for n, (v, _) in models.items())}; device "
          f"{args.device}; {args.seconds:g} s per cell; max batch {args.max_batch}, queue delay "
          f"{args.delay_ms:g} ms; raw images", flush=True)
    cold = (cold_start.measure(args.models_dir, args.cold_start_runs,
                               ["--device", args.device, *args.server_arg])
            if args.cold_start_runs else [])
    before = in_process_cells(models, pixels, args, cores.usable)
    rows = [] if args.no_bare else bare_cells(requests_for("lenet_bn", 1, pixels)["v1"], args)
    rows_attacks, status = serve_all(models, pixels, args, rows)
    status = max(status, tracing_cells(models, pixels, args, rows))
    rows += in_process_rows(before, in_process_cells(models, pixels, args, cores.usable))
    rows.sort(key=lambda r: (["in-process", BARE, "fmnist-serve", TRACED].index(r["side"]),
                             r["model"], PROTOCOLS.index(r["protocol"]), r["workers"] != "1",
                             _tracing_order(r.get("tracing", "off")), r["batch"], r["callers"]))
    found = [r for name in models for r in ratios(rows, name, args.max_batch)]
    report(rows, found, models)
    if cold:
        print("\n" + cold_start.report(cold, len(pick_models(args.models_dir, None))))
    for a in rows_attacks:
        print(f"attack {a['attack']}: " + ", ".join(f"{k}={v}" for k, v in a.items() if k != "attack"))
    load_after = os.getloadavg()
    print(f"load average after (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load_after)}")
    path = results.write("serve", {
        "device": args.device, "seconds": args.seconds, "max_batch": args.max_batch,
        "delay_ms": args.delay_ms, "usable_cores": cores.usable, "load_before": load_before,
        "load_after": load_after, "rows": rows, "ratios": found, "attacks": rows_attacks,
        "cold_start": cold},
        args.artifacts)
    print(f"\nwritten: {path}")
    return status


def serve_all(models: dict, pixels, args, rows: list[dict]) -> tuple[list[dict], int]:
    """The fmnist-serve cells for each --workers setting (one server each), and the attacks on
    the first; (attacks, exit status: 1 when a server did not stop cleanly)."""
    found, status = [], 0
    extra = ["--max-batch", str(args.max_batch), "--max-queue-delay-ms", str(args.delay_ms),
             *args.server_arg]
    folders = {n: d / str(v) for n, (v, d) in models.items()}
    for workers in args.workers:
        server = ServerProcess(folders, args.device, [*extra, "--workers", workers], metrics=True,
                               http=workers == args.workers[0] and bool(args.http))
        try:
            port = server.wait()
            served = {m.name for m in _list_models(port).models}
            if served != set(models):
                raise SystemExit(f"the server serves {sorted(served)}, not {sorted(models)}")
            rows += server_cells(server, models, pixels, args, workers)
            if workers == args.workers[0] and not args.no_attacks:
                found = attacks(port, next(iter(models)), server)
        finally:
            status = max(status, _stopped(server, f"--workers {workers}"))
    return found, status


def tracing_cells(models: dict, pixels, args, rows: list[dict]) -> int:
    """fmnist.v1 at --tracing-callers with each --tracing setting, one server each (a
    stand-in collector for those that trace), appended to `rows`; 1 when a server did not stop
    cleanly, else 0."""
    from bench.collector import Collector

    status = 0
    extra = ["--max-batch", str(args.max_batch), "--max-queue-delay-ms", str(args.delay_ms),
             "--workers", "1", *args.server_arg]
    folders = {n: d / str(v) for n, (v, d) in models.items()}
    with Collector() as collector:
        for setting in args.tracing:
            server = ServerProcess(folders, args.device, extra, metrics=True,
                                   env=None if setting == "off" else collector.environment(setting))
            try:
                server.wait()
                for name, (version, _) in models.items():
                    request = requests_for(name, version, pixels)["v1"]
                    for callers in args.tracing_callers:
                        exports = collector.counts()
                        cell = measured(server, "v1", request, callers, args.seconds, 1)
                        after = collector.counts()
                        rows.append({"model": name, "side": TRACED, "protocol": "v1",
                                     "workers": "1", "batch": 1, "callers": callers,
                                     "tracing": setting, "exports": after[0] - exports[0],
                                     "export_bytes": after[1] - exports[1], **cell})
                        _progress(rows[-1])
            finally:
                status = max(status, _stopped(server, f"tracing {setting}"))
    return status


def _stopped(server: ServerProcess, what: str) -> int:
    """Stop `server`: 0 when it exited 0, else 1, with its last log lines on stderr."""
    rc = server.stop()
    if rc != 0:
        print(f"error: the server ({what}) exited with status {rc}:\n"
              + "\n".join(list(server.log)[-20:]), file=sys.stderr)
    return int(rc != 0)


def _tracing_order(setting: str) -> float:
    return -1.0 if setting == "off" else float(setting)


def in_process_rows(before: dict, after: dict) -> list[dict]:
    """The mean of the in-process figures measured before and after the server cells."""
    rows = []
    for (name, batch), first in before.items():
        second = after[(name, batch)]
        mean = {k: (first[k] + second[k]) / 2 for k in second if k != "provider"}
        rows.append({"model": name, "provider": first["provider"], "side": "in-process",
                     "protocol": "-", "workers": "-", "batch": batch, "callers": 1, **mean})
    return rows


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
