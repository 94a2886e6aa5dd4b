"""`make bench-serve`: the gRPC server against in-process onnxruntime, same model, one run; then
three attacks on the server.

In-process: one thread calls server/models/runner.py's OnnxRunner back to back at batch 1 and at
--max-batch (measured before and after the server cells; the mean is reported, so drifting
machine load hits both sides). Server: `python -m server` as its own process (its own GIL, as in
production) with the same runner settings, driven by an asyncio gRPC client: 1, 8, 32 and 64
concurrent callers of single images, and 4 callers of --max-batch images. Raw 28x28 pixels (the
samples/) are sent, so image decoding is not timed (--encoded sends the PNG files instead).

Reported per cell: images/s, p50/p90/p99 latency per call, and the ratios the serving targets are
stated in:
- 32 single-image callers' throughput / in-process throughput at max batch   (target >= 0.85)
- p99 at 32 callers / (queue delay + one in-process max-batch run)           (target <= 3)
- 1 caller's p50 - in-process batch-1 p50                                    (target <= 1 ms)

Attacks (the first model): 200 streams that open and never send a request, while health, ListModels
and Classify are timed (goal < 100 ms each); requests of 16 tiny-on-the-wire 4096x4096 16-bit PNGs
and of 2 such PNGs, 32 in flight, with the server's resident memory before and at its peak; five
64-image calls followed by single-image calls with a 100 ms deadline.

    python -m bench.serve [--models resnet18 lenet_bn] [--seconds 3] [--device cpu]

Nothing here imports torch. Results also go to $ARTIFACTS/bench/serve.json (bench/results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from bench import results

REPO = Path(__file__).resolve().parent.parent
CLASSIFY = "/fmnist.v1.Classifier/Classify"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1),
                  ("grpc.max_receive_message_length", -1)]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="models to measure (default: every model in --models-dir)")
    p.add_argument("--models-dir", type=Path,
                   default=results.default_artifacts() / "models",
                   help="exported models (default: $ARTIFACTS/models or artifacts/models)")
    p.add_argument("--artifacts", type=Path, default=results.default_artifacts(),
                   help="where bench/serve.json is written (default: $ARTIFACTS or artifacts)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--callers", nargs="+", type=int, default=[1, 8, 32, 64], metavar="N",
                   help="concurrent single-image callers (default: 1 8 32 64)")
    p.add_argument("--batch-callers", type=int, default=4,
                   help="concurrent callers of --max-batch images (default: 4)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default: 32)")
    p.add_argument("--delay-ms", type=float, default=2.0,
                   help="the server's --max-queue-delay-ms (default: 2)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="measuring time per cell (default: 3)")
    p.add_argument("--encoded", action="store_true",
                   help="send PNG bytes to the server (adds decoding there) instead of raw pixels")
    p.add_argument("--no-attacks", action="store_true", help="skip the three attacks")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m server` (repeatable, e.g. --server-arg=--spinning)")
    return p


# --- measuring -----------------------------------------------------------------------------------

def summarize(latencies: list[float], elapsed: float, images_per_call: int) -> dict:
    ms = np.array(latencies) * 1000
    return {"images_per_s": len(ms) * images_per_call / elapsed, "calls": len(ms),
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def in_process(run: Callable[[], object], seconds: float, images_per_call: int) -> dict:
    run()  # warm
    latencies = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds or not latencies:
        run()
        latencies.append(time.perf_counter() - now)
    return summarize(latencies, time.perf_counter() - start, images_per_call)


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


async def closed_loop(port: int, request, callers: int, seconds: float) -> dict:
    """Classify over one connection (as one client process would), driven by `drive`."""
    import grpc
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        return await drive(lambda: stub.Classify(request, timeout=60), callers, seconds,
                           len(request.images))


# --- the server process --------------------------------------------------------------------------

class ServerProcess:
    """`python -m server --port 0` over a folder holding only the chosen models."""

    def __init__(self, models: dict[str, Path], device: str, extra: list[str]):
        """`models`: name -> the version folder to serve. Linked (or copied) into a folder of
        their own: the server refuses symlinks that lead out of its models folder."""
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
        for name, version_dir in models.items():
            target = Path(self._tmp.name) / name / version_dir.name
            try:
                shutil.copytree(version_dir, target, copy_function=os.link)
            except OSError:  # another filesystem: copy
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(version_dir, target)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--models-dir", self._tmp.name, "--port", "0",
             "--metrics-port", "0", "--device", device, "--log-format", "json", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port: int | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "listening on" in record.get("message", ""):
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

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self._tmp.cleanup()
        return rc


def pick_models(models_dir: Path, names: list[str] | None) -> dict[str, tuple[int, Path]]:
    """name -> (newest version, its model folder), for the named models or all of them."""
    from server.models.scan import scan
    found = scan(models_dir)
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


def _list_models(port: int):
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)


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


def attack_idle_streams(port: int, model: str, streams: int = 200) -> dict:
    """Open `streams` Classify calls that never send their request; time health, ListModels and
    Classify on another connection meanwhile."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    release = threading.Event()
    attackers = [grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
                 for _ in range(4)]
    idle = [f for ch in attackers
            for f in open_idle_streams(ch, streams // len(attackers), release, timeout=120)]
    time.sleep(1.0)  # let them all open
    out: dict = {"attack": "idle streams", "streams": len(idle)}
    try:
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
                latencies, errors = [], 0
                for _ in range(20):
                    t0 = time.perf_counter()
                    try:
                        check()
                        latencies.append(time.perf_counter() - t0)
                    except grpc.RpcError:
                        errors += 1
                out[f"{name}_p50_ms"] = float(np.median(latencies) * 1000) if latencies else None
                out[f"{name}_max_ms"] = float(max(latencies) * 1000) if latencies else None
                out[f"{name}_errors"] = errors
        out["streams_still_open"] = sum(not f.done() for f in idle)
    finally:
        release.set()
        for f in idle:
            f.cancel()
        for ch in attackers:
            ch.close()
    return out


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


def attack_small_after_big(port: int, model: str, max_batch: int) -> dict:
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


# --- report --------------------------------------------------------------------------------------

def format_table(rows: list[dict]) -> str:
    header = ("model", "side", "batch", "callers", "img/s", "p50 ms", "p90 ms", "p99 ms")
    table = [header] + [(r["model"], r["side"], str(r["batch"]), str(r["callers"]),
                         f"{r['images_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['p99_ms']:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def ratios(rows: list[dict], model: str, max_batch: int, delay_ms: float) -> list[dict]:
    """The three target ratios for one model, from its rows."""
    def cell(side: str, batch: int, callers: int) -> dict | None:
        return next((r for r in rows if (r["model"], r["side"], r["batch"], r["callers"])
                     == (model, side, batch, callers)), None)

    local1, local_max = cell("in-process", 1, 1), cell("in-process", max_batch, 1)
    one, thirty_two = cell("server", 1, 1), cell("server", 1, 32)
    out = []
    if local_max and thirty_two:
        out.append({"model": model, "ratio": "32 callers img/s / in-process max-batch img/s",
                    "value": thirty_two["images_per_s"] / local_max["images_per_s"],
                    "target": ">= 0.85"})
        budget = delay_ms + local_max["p50_ms"]
        out.append({"model": model, "ratio": "32 callers p99 / (delay + max-batch run)",
                    "value": thirty_two["p99_ms"] / budget, "target": "<= 3"})
    if local1 and one:
        out.append({"model": model, "ratio": "1 caller p50 - in-process batch-1 p50 (ms)",
                    "value": one["p50_ms"] - local1["p50_ms"], "target": "<= 1"})
    return out


def met(ratio: dict) -> bool:
    op, bound = ratio["target"].split()
    return ratio["value"] >= float(bound) if op == ">=" else ratio["value"] <= float(bound)


def main(args: argparse.Namespace) -> int:
    from fmnist.v1 import classifier_pb2 as pb

    from server.models.providers import ProviderPolicy
    from server.models.runner import OnnxRunner

    models = pick_models(args.models_dir, args.models)
    pixels, pngs = sample_images()
    cpu, isa = results.cpu_info()
    print(f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores; ISA: {' '.join(isa) or 'unknown'}")
    print(f"models: {', '.join(f'{n} v{v}' for n, (v, _) in models.items())}; device {args.device};"
          f" {args.seconds:g}s per cell; max batch {args.max_batch}, queue delay {args.delay_ms:g} "
          f"ms; {'PNG' if args.encoded else 'raw'} images", flush=True)
    extra = ["--max-batch", str(args.max_batch), "--max-queue-delay-ms", str(args.delay_ms),
             *args.server_arg]
    server = ServerProcess({n: d / str(v) for n, (v, d) in models.items()}, args.device, extra)
    policy = ProviderPolicy(args.device)
    rows, attacks = [], []
    try:
        port = server.wait()
        served = {m.name for m in _list_models(port).models}
        if served != set(models):
            raise SystemExit(f"the server serves {sorted(served)}, not {sorted(models)}:\n"
                             + "\n".join(list(server.log)[-20:]))
        for name, (version, model_dir) in models.items():
            runner = OnnxRunner(model_dir / str(version) / "model.onnx", policy.requested(),
                                spinning="--spinning" in args.server_arg)
            provider = policy.check([runner.provider], f"{name} v{version}")
            local = {b: batch_of(pixels, b) for b in (1, args.max_batch)}
            before = {b: in_process(lambda: runner.run(local[b]), args.seconds / 2, b)
                      for b in local}

            def request(n: int):
                images = ([pb.Image(encoded=pngs[i % len(pngs)]) for i in range(n)] if args.encoded
                          else [pb.Image(raw=row.tobytes()) for row in batch_of(pixels, n)[:, 0]])
                return pb.ClassifyRequest(model=name, version=version, images=images)

            cells = [(1, c) for c in args.callers] + [(args.max_batch, args.batch_callers)]
            for batch, callers in cells:
                cell = asyncio.run(closed_loop(port, request(batch), callers, args.seconds))
                rows.append({"model": name, "provider": provider, "side": "server",
                             "batch": batch, "callers": callers, **cell})
                print(f"  {name} server: {callers} caller(s) of {batch}: "
                      f"{cell['images_per_s']:.0f} img/s, p99 {cell['p99_ms']:.1f} ms", flush=True)
            for b in local:  # again after the server cells; report the mean of both
                after = in_process(lambda: runner.run(local[b]), args.seconds / 2, b)
                mean = {k: (before[b][k] + after[k]) / 2 for k in after}
                rows.append({"model": name, "provider": provider, "side": "in-process",
                             "batch": b, "callers": 1, **mean})
                print(f"  {name} in-process batch {b}: {mean['images_per_s']:.0f} img/s", flush=True)
            runner.close()
        if not args.no_attacks:
            first = next(iter(models))
            print(f"attacks on {first} ...", flush=True)
            attacks = [attack_idle_streams(port, first), attack_amplification(port, first, server),
                       attack_small_after_big(port, first, args.max_batch)]
    finally:
        rc = server.stop()
    rows.sort(key=lambda r: (r["model"], r["side"] != "in-process", r["batch"], r["callers"]))
    found = [r for name in models for r in ratios(rows, name, args.max_batch, args.delay_ms)]
    print()
    print(format_table(rows))
    print()
    for r in found:
        print(f"{r['model']}: {r['ratio']} = {r['value']:.2f} (target {r['target']}: "
              f"{'met' if met(r) else 'NOT met'})")
    for a in attacks:
        print(f"attack {a['attack']}: " + ", ".join(f"{k}={v}" for k, v in a.items() if k != "attack"))
    path = results.write("serve", {"device": args.device, "seconds": args.seconds,
                                   "max_batch": args.max_batch, "delay_ms": args.delay_ms,
                                   "encoded": args.encoded, "rows": rows, "ratios": found,
                                   "attacks": attacks}, args.artifacts)
    print(f"\nwritten: {path}")
    if rc != 0:
        print(f"error: the server exited with status {rc}:\n" + "\n".join(list(server.log)[-20:]),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
