"""`make profile-serve`: where a request's CPU goes in `python -m server` under load.

The server runs as its own process on one model (lenet_bn by default: small enough that the
front-end, not onnxruntime, is what a request costs). For each protocol (fmnist.v1 Classify,
KServe v2 ModelInfer) `--callers` single-image callers keep it busy from another process (h2load,
C, so the load generator takes little of the server's cores; or bench/serve.py's asyncio driver
where h2load is missing), while py-spy samples the server without stopping it (--nonblocking).
Printed per protocol:

- img/s and the server's CPU per request, both over the sampling window (requests counted by the
  server's own fmnist_requests_total, so a gRPC error, an HTTP 200 to h2load, is not counted OK);
- each thread's share of the server's CPU, read from /proc (onnxruntime's and grpc's native
  threads too, which py-spy cannot see);
- each Python thread's hottest frames (leaf frames, and the server's own functions inclusive).
  On the event loop, samples that end in asyncio's `Handle._run` are grpc's Cython callbacks:
  they have no Python frame of their own.

    python scripts/profile_serve.py [--model lenet_bn] [--callers 32] [--seconds 10]

The raw stacks go to <artifacts>/profile/<protocol>.txt (flamegraph.pl's collapsed format).
Needs py-spy (requirements/dev.txt) and the right to attach to a child process (root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

import model_contract  # noqa: E402
from cli_text import HelpFormatter  # noqa: E402

PATHS = {"v1": "/fmnist.v1.Classifier/Classify",
         "v2": "/inference.GRPCInferenceService/ModelInfer"}
LISTENING = re.compile(r"listening on (\S+):(\d+)")
REQUESTS = re.compile(r'^fmnist_requests_total\{(.*)\} (\S+)$', re.M)
OWN_CODE = ("server/", "model_contract")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models-dir", type=Path, default=model_contract.default_models_dir(),
                   help="exported models (`make demo` or `make export` writes them)")
    p.add_argument("--model", default="lenet_bn", help="the model to load and call")
    p.add_argument("--callers", type=int, default=32,
                   help="single-image calls kept in flight (one connection)")
    p.add_argument("--seconds", type=float, default=10.0, help="sampling window per protocol")
    p.add_argument("--protocols", nargs="+", choices=sorted(PATHS), default=sorted(PATHS),
                   help="v1: fmnist.v1 Classify; v2: KServe v2 ModelInfer")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=10, help="frames shown per thread")
    p.add_argument("--driver", choices=("auto", "h2load", "python"), default="auto",
                   help="load generator; auto: h2load when installed (Debian nghttp2-client)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more flag for `python -m server` (repeatable), e.g. "
                        "--server-arg=--intra-op-threads=1")
    p.add_argument("--artifacts", type=Path, default=model_contract.default_artifacts(),
                   help="the raw stacks go to <artifacts>/profile/")
    return p


# --- the server ----------------------------------------------------------------------------------

class Served:
    """`python -m server` on a folder holding only `model` (hard links: the server refuses
    symlinks out of its folder), with /metrics on a free port."""

    def __init__(self, models_dir: Path, model: str, extra: list[str]):
        versions = [int(p.name) for p in (models_dir / model).glob("*") if p.name.isdigit()]
        if not versions:
            raise SystemExit(f"no exported {model} in {models_dir}: run `make demo` (or "
                             f"`make train export MODELS={model}`), or pass --models-dir")
        self.version = max(versions)
        self._tmp = tempfile.TemporaryDirectory(prefix="profile-serve-")
        source, target = models_dir / model / str(self.version), Path(self._tmp.name) / model
        target.mkdir()
        try:
            shutil.copytree(source, target / source.name, copy_function=os.link)
        except OSError:  # another filesystem
            shutil.rmtree(target / source.name, ignore_errors=True)
            shutil.copytree(source, target / source.name)
        self.metrics_port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--models-dir", self._tmp.name, "--port", "0",
             "--metrics-port", str(self.metrics_port), "--device", "cpu", "--poll-seconds", "0",
             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if m := LISTENING.search(line):  # then keep draining the log: the pipe never fills
                threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()
                return int(m.group(2))
        raise SystemExit("the server did not start:\n" + "".join(lines[-20:]))

    def requests(self) -> dict[str, float]:
        """fmnist_requests_total by code, from the server's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        counts: dict[str, float] = collections.Counter()
        for labels, value in REQUESTS.findall(text):
            counts[re.search(r'code="([^"]*)"', labels).group(1)] += float(value)
        return counts

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self._tmp.cleanup()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (its kernel name, CPU seconds so far), for every thread of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return threads


# --- requests and load ---------------------------------------------------------------------------

def requests_for(model: str, version: int):
    """One single-image request per protocol, as messages (for a stub) and gRPC frames (h2load)."""
    from fmnist.v1 import classifier_pb2 as pb
    from inference import grpc_service_pb2 as v2
    from PIL import Image

    pixels = np.asarray(Image.open(REPO / "samples" / "ankle_boot.png"), np.uint8)
    v1 = pb.ClassifyRequest(model=model, version=version, images=[pb.Image(raw=pixels.tobytes())])
    infer = v2.ModelInferRequest(model_name=model, model_version=str(version))
    side = model_contract.SIDE
    infer.inputs.add(name=model_contract.INPUT, datatype="UINT8", shape=[1, 1, side, side])
    infer.raw_input_contents.append(pixels.tobytes())
    return {"v1": v1, "v2": infer}


def grpc_frame(message) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def check_reply(port: int, protocol: str, request) -> None:
    """One call with a real stub: h2load counts any gRPC error as an HTTP 200."""
    import grpc
    from fmnist.v1 import classifier_pb2_grpc
    from inference import grpc_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if protocol == "v1":
            reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=30)
            ok = len(reply.classifications) == 1
        else:
            reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, timeout=30)
            ok = len(reply.raw_output_contents) == 2
    if not ok:
        raise SystemExit(f"{protocol}: unexpected reply {reply}")


class Load:
    """The load generator, running `seconds` after a 1 s warm-up: h2load as a child process, or
    bench/serve.py's closed-loop asyncio driver on a thread of this process (not the server's)."""

    def __init__(self, driver: str, port: int, protocol: str, request, callers: int,
                 seconds: float, frames: Path):
        self.output, self._proc, self._thread = "", None, None
        if driver == "h2load":
            frames.write_bytes(grpc_frame(request))
            self._proc = subprocess.Popen(
                ["h2load", "-c", "1", "-m", str(callers), "-D", f"{seconds:g}", "--warm-up-time",
                 "1", "-d", str(frames), "-H", "content-type: application/grpc", "-H",
                 "te: trailers", f"http://127.0.0.1:{port}{PATHS[protocol]}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        else:
            self._thread = threading.Thread(target=self._drive, daemon=True,
                                            args=(port, protocol, request, callers, seconds + 1))
            self._thread.start()

    def _drive(self, port: int, protocol: str, request, callers: int, seconds: float) -> None:
        import grpc

        from bench.serve import OWN_CONNECTION, drive

        async def run():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 options=OWN_CONNECTION) as channel:
                call = channel.unary_unary(PATHS[protocol],
                                           request_serializer=type(request).SerializeToString)
                return await drive(lambda: call(request, timeout=60), callers, seconds, 1)

        try:
            self.output = str(asyncio.run(run()))
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.output = f"error: {e!r}"

    def finish(self, timeout: float) -> bool:
        """Wait for the end; True when the load generator itself reports no failure."""
        if self._proc is not None:
            self.output, _ = self._proc.communicate(timeout=timeout)
            return self._proc.returncode == 0
        self._thread.join(timeout)
        return not self.output.startswith("error")


# --- one protocol --------------------------------------------------------------------------------

@dataclass
class Window:
    """What the server did while py-spy sampled it."""

    protocol: str
    callers: int
    seconds: float
    codes: dict[str, float]  # requests by status code
    threads: dict[int, tuple[str, float]]  # tid -> (kernel name, CPU seconds in the window)
    stacks: Path

    @property
    def ok(self) -> float:
        return self.codes.get("OK", 0.0)


def profile(served: Served, protocol: str, request, args: argparse.Namespace,
            driver: str) -> Window:
    out = args.artifacts / "profile"
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / f"{protocol}.txt"
    check_reply(served.port, protocol, request)
    load = Load(driver, served.port, protocol, request, args.callers, args.seconds + 1,
                out / f"{protocol}.request")
    time.sleep(1.5)  # past the load generator's warm-up: the window sees steady load only
    codes, cpu, started = served.requests(), thread_cpu(served.proc.pid), time.monotonic()
    spy = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                          str(served.proc.pid), "--duration", f"{args.seconds:g}", "--rate",
                          str(args.rate), "--threads", "--nonblocking", "--format", "raw",
                          "-o", str(stacks)], capture_output=True, text=True)
    seconds = time.monotonic() - started
    after, codes_after = thread_cpu(served.proc.pid), served.requests()
    load_ok = load.finish(timeout=args.seconds + 60)
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed (root, or kernel.yama.ptrace_scope 0, is needed to "
                         f"attach):\n{spy.stderr or spy.stdout}")
    if not load_ok:
        raise SystemExit(f"the load generator failed:\n{load.output[-2000:]}")
    threads = {tid: (name, seconds_ - cpu.get(tid, (name, 0.0))[1])
               for tid, (name, seconds_) in after.items()}
    in_window = {c: n - codes.get(c, 0.0) for c, n in codes_after.items()}
    return Window(protocol, args.callers, seconds, in_window, threads, stacks)


def read_stacks(path: Path) -> dict[int, tuple[str, collections.Counter, collections.Counter]]:
    """tid -> (thread name, leaf frames, the server's own frames inclusive) from py-spy's raw
    output, whose lines are "thread (TID): NAME;frame;...;frame COUNT"."""
    threads: dict[int, tuple[str, collections.Counter, collections.Counter]] = {}
    for line in path.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        head, *frames = stack.split(";")
        m = re.match(r"thread \((\d+)\): ?(.*)", head)
        if not m or not frames:
            continue
        tid = int(m.group(1), 0)
        name, leaves, own = threads.setdefault(
            tid, (m.group(2) or str(tid), collections.Counter(), collections.Counter()))
        leaves[frames[-1]] += int(count)
        for frame in {f for f in frames if any(code in f for code in OWN_CODE)}:
            own[frame] += int(count)
    return threads


def report(window: Window, top: int) -> str:
    cpu_total = sum(seconds for _, seconds in window.threads.values())
    bad = {c: int(n) for c, n in window.codes.items() if c != "OK" and n}
    # The load generator resets the calls in flight when it stops: one per caller at most.
    cut = bad.pop("CANCELLED") if 0 < bad.get("CANCELLED", 0) <= window.callers else 0
    lines = [f"{window.protocol}: {window.ok / window.seconds:,.0f} img/s, server CPU "
             f"{cpu_total / max(window.ok, 1) * 1e6:,.0f} us per request "
             f"({cpu_total / window.seconds:.2f} cores)" + (f"; NOT OK: {bad}" if bad else "")
             + (f"; {cut} cancelled as the load stopped" if cut else "")]
    stacks = read_stacks(window.stacks)
    for tid, (name, seconds) in sorted(window.threads.items(), key=lambda t: -t[1][1]):
        if seconds / max(cpu_total, 1e-9) < 0.01:
            continue
        python_name, leaves, own = stacks.get(tid, (None, None, None))
        shown = python_name or f"{name} (native)"
        lines.append(f"  {seconds / cpu_total:6.1%} of the CPU  {shown}")
        if leaves:
            samples = sum(leaves.values())
            lines += [f"      {n / samples:6.1%}  {frame}" for frame, n in leaves.most_common(top)]
            lines += [f"      {n / samples:6.1%}  incl. {frame}"
                      for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    driver = args.driver if args.driver != "auto" else (
        "h2load" if shutil.which("h2load") else "python")
    from bench import results
    cpu, isa = results.cpu_info()
    print(f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores; ISA: {' '.join(isa)}; load "
          f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    served = Served(args.models_dir, args.model, args.server_arg)
    try:
        print(f"{args.model} v{served.version}, {args.callers} single-image callers ({driver}), "
              f"{args.seconds:g} s per protocol, py-spy at {args.rate} Hz; server flags: "
              f"{' '.join(args.server_arg) or 'the defaults'}", flush=True)
        messages = requests_for(args.model, served.version)
        for protocol in args.protocols:
            window = profile(served, protocol, messages[protocol], args, driver)
            print(report(window, args.top), flush=True)
    finally:
        served.stop()
    print(f"raw stacks: {args.artifacts / 'profile'}/<protocol>.txt; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
