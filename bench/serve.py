"""`make bench-serve`: in-process onnxruntime against the gRPC server over loopback, same model.

Both sides run the very same runner (server/runner.py's OnnxRunner on the same model file and
provider); the server side adds protobuf, gRPC over loopback, the server's thread pool and the
core's checks. Each cell is measured for --seconds, in-process first, then through the server,
with 1 and 16 concurrent callers (threads) sending batches of 1 and 32 raw 28x28 images (the
samples/ pixels, so no image decoding is timed; --encoded sends the PNG files instead).
In-process and server slices alternate within each cell (--rounds), so drifting machine load hits
both alike. Reported: images/second, p50/p99 latency per call, and server/in-process ratios.

    python -m bench.serve [--models lenet_bn resnet18] [--seconds 1.5] [--device cpu]

The server runs as its own process (`python -m server --port 0`), so the callers and the server do
not share one GIL, as in production. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Cell:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="models to measure (default: every model in --models-dir)")
    p.add_argument("--models-dir", type=Path,
                   default=Path(os.environ.get("ARTIFACTS", "artifacts")) / "models",
                   help="exported models (default: $ARTIFACTS/models or artifacts/models)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32], metavar="N")
    p.add_argument("--callers", nargs="+", type=int, default=[1, 16], metavar="N",
                   help="concurrent callers (threads) (default: 1 16)")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="measuring time per cell and side (default: 1.5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="in-process and server slices alternate this many times per cell")
    p.add_argument("--encoded", action="store_true",
                   help="send PNG bytes to the server (adds decoding there) instead of raw pixels")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="onnxruntime threads per run, both sides (0: onnxruntime's default)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    return p


@dataclass
class Samples:
    """Latencies (seconds) of every call, and the wall time the calls took, over one or more slices."""

    latencies: list[float]
    elapsed: float = 0.0

    def cell(self, images_per_call: int) -> Cell:
        ms = np.array(self.latencies) * 1000
        return Cell(images_per_s=len(ms) * images_per_call / self.elapsed,
                    p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                    calls=len(ms))


def measure(call: Callable[[], object], callers: int, seconds: float, into: Samples) -> None:
    """`callers` threads call `call` back to back for `seconds` (each at least once)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    start = time.perf_counter()
    stop_at = start + seconds
    ends = [start] * callers

    def caller(i: int) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at and latencies[i]:
                break
            call()
            t1 = time.perf_counter()
            latencies[i].append(t1 - t0)
            ends[i] = t1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    into.latencies += [x for per in latencies for x in per]
    into.elapsed += max(ends) - start


def side_by_side(local: Callable[[], object], remote: Callable[[], object], callers: int,
                 seconds: float, rounds: int) -> tuple[Samples, Samples]:
    """Alternate in-process and server slices (`rounds` each, `seconds` in all per side), so a
    change in the machine's load during the cell hits both sides alike."""
    local(), remote()  # warm-up: first-call allocations, connection set-up
    a, b = Samples([]), Samples([])
    for _ in range(rounds):
        measure(local, callers, seconds / rounds, a)
        measure(remote, callers, seconds / rounds, b)
    return a, b


def sample_images() -> tuple[np.ndarray, list[bytes]]:
    """The 10 sample images: uint8 [10, 28, 28] pixels and their PNG files."""
    from PIL import Image
    files = sorted((REPO / "samples").glob("*.png"))
    return (np.stack([np.asarray(Image.open(f)) for f in files]), [f.read_bytes() for f in files])


def batch_of(pixels: np.ndarray, n: int) -> np.ndarray:
    return pixels[np.arange(n) % len(pixels)][:, None].copy()  # uint8 [n, 1, 28, 28]


class ServerProcess:
    """`python -m server --port 0` over a folder holding only the chosen models."""

    def __init__(self, models: dict[str, Path], device: str, max_batch: int, max_callers: int,
                 intra_op_threads: int = 0):
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
        for name, model_dir in models.items():
            (Path(self._tmp.name) / name).symlink_to(model_dir.resolve(), target_is_directory=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--models-dir", self._tmp.name, "--port", "0",
             "--device", device, "--log-format", "json",
             "--max-images-per-request", str(max(64, max_batch)),
             "--max-in-flight", str(max(32, 2 * max_callers)),
             "--intra-op-threads", str(intra_op_threads)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port: int | None = None
        self.log: list[str] = []
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
            raise SystemExit("the server did not start:\n" + "\n".join(self.log[-20:]))
        return self.port

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self._tmp.cleanup()
        return rc


def pick_models(models_dir: Path, names: list[str] | None) -> dict[str, tuple[int, Path]]:
    """name -> (newest version, its model folder), for the named models or all of them."""
    from server.store import scan
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


def format_table(rows: list[dict]) -> str:
    header = ("model", "provider", "batch", "callers", "in-proc img/s", "p50 ms", "p99 ms",
              "server img/s", "p50 ms", "p99 ms", "img/s ratio", "p50 ratio")
    table = [header] + [(
        r["model"], r["provider"].replace("ExecutionProvider", ""), str(r["batch"]),
        str(r["callers"]), f"{r['in_process']['images_per_s']:.0f}",
        f"{r['in_process']['p50_ms']:.2f}", f"{r['in_process']['p99_ms']:.2f}",
        f"{r['server']['images_per_s']:.0f}", f"{r['server']['p50_ms']:.2f}",
        f"{r['server']['p99_ms']:.2f}",
        f"{r['server']['images_per_s'] / r['in_process']['images_per_s']:.2f}",
        f"{r['server']['p50_ms'] / r['in_process']['p50_ms']:.1f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in table]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(args: argparse.Namespace) -> int:
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    from server.providers import ProviderPolicy
    from server.runner import OnnxRunner

    models = pick_models(args.models_dir, args.models)
    pixels, pngs = sample_images()
    print(f"models: {', '.join(f'{n} v{v}' for n, (v, _) in models.items())}; device {args.device}; "
          f"{args.seconds:g}s per cell; batches {args.batch_sizes}; callers {args.callers}; "
          f"{'PNG' if args.encoded else 'raw'} images; {os.cpu_count()} CPUs; intra-op threads "
          f"{args.intra_op_threads or 'default'}", flush=True)
    server = ServerProcess({n: d for n, (_, d) in models.items()}, args.device,
                           max(args.batch_sizes), max(args.callers), args.intra_op_threads)
    policy = ProviderPolicy(args.device)
    rows = []
    try:
        port = server.wait()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                        options=[("grpc.max_send_message_length", -1)])
        stub = pb_grpc.ClassifierStub(channel)
        for name, (version, model_dir) in models.items():
            runner = OnnxRunner(model_dir / str(version) / "model.onnx", policy.requested(),
                                args.intra_op_threads)
            provider = policy.check([runner.provider], f"{name} v{version}")
            runner.warmup()
            for batch in args.batch_sizes:
                images = batch_of(pixels, batch)
                wire = ([pb.Image(encoded=pngs[i % len(pngs)]) for i in range(batch)] if args.encoded
                        else [pb.Image(raw=row.tobytes()) for row in images[:, 0]])
                request = pb.ClassifyRequest(model=name, version=version, images=wire)
                for callers in args.callers:
                    a, b = side_by_side(lambda: runner.run(images),
                                        lambda: stub.Classify(request, timeout=600),
                                        callers, args.seconds, args.rounds)
                    local, remote = a.cell(batch), b.cell(batch)
                    rows.append({"model": name, "version": version, "provider": provider,
                                 "batch": batch, "callers": callers, "in_process": asdict(local),
                                 "server": asdict(remote)})
                    print(f"  {name} batch {batch} callers {callers}: in-process "
                          f"{local.images_per_s:.0f} img/s, server {remote.images_per_s:.0f} img/s",
                          flush=True)
            runner.close()
        channel.close()
    finally:
        rc = server.stop()
    print()
    print(format_table(rows))
    print("\nimg/s ratio: server images/s over in-process images/s (1.0: the server costs nothing); "
          "p50 ratio: server p50 latency over in-process p50 latency.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "device": args.device,
                                         "seconds": args.seconds, "encoded": args.encoded,
                                         "rows": rows}, indent=2))
    if rc != 0:
        print(f"warning: the server exited with status {rc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
