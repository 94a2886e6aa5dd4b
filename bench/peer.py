"""`make bench-peer`: fmnist-serve against MLServer 1.7 and Triton's core (PyTriton 0.7), the
same model.onnx behind each, in one run.

MLServer serves the model through bench/peer_runtime.py (its venv: .venv-peer), Triton through
bench/peer_triton.py (.venv-triton, from Debian's python3.11), both with onnxruntime's intra-op
threads at the usable cores, no spinning, and their dynamic batching at fmnist-serve's settings
(max batch 32, 2 ms). fmnist-serve runs with --workers 1 and with auto. One load generator,
h2load (bench/load.py), sends every server the same serialised KServe v2 ModelInfer request (one
raw uint8 image, the probabilities output) from 1, 8, 32 and 64 callers, the servers taking
turns per cell, so that drifting machine load hits them alike. Before each cell one reply is
checked with a real stub, and after it the server's own failure count (fmnist-serve's
fmnist_requests_total, Triton's nv_inference_request_failure; MLServer: the stub only).

Printed: img/s, p50/p99 per server and cell, and the cores other processes used meanwhile
(bench/neighbours.py: a cell beside other work is flagged); the ratios: fmnist-serve with `auto`
workers / Triton's core at 32 callers (target >= 1.2 where the front-end is the limit, lenet_bn),
and / MLServer; the CPU, its ISA flags and the load averages. Then a check: fmnist-serve's
32-caller cell of the first model measured again with the other servers stopped, as h2load
alone would measure it; the two must agree within 15%, or the run fails.

    make bench-peer                          # sets up .venv-peer and .venv-triton on first use
    python -m bench.peer --models lenet_bn --peers triton --callers 32

Nothing here imports torch. Results also go to $ARTIFACTS/bench/peer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import model_contract as contract
from bench import results
from bench.load import PATHS, frame, h2load, require_h2load
from bench.neighbours import Neighbours, flag
from bench.serve import ServerProcess, free_port, measured, pick_models, sample_images

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("MLServer", "Triton", "fmnist-serve")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet_bn", "resnet18"], metavar="NAME",
                   help="models to compare (default: lenet_bn resnet18)")
    p.add_argument("--models-dir", type=Path,
                   default=contract.default_models_dir(),
                   help="exported models (default: $ARTIFACTS/models or artifacts/models)")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="where bench/peer.json is written (default: $ARTIFACTS or artifacts)")
    p.add_argument("--peers", nargs="*", choices=("mlserver", "triton"),
                   default=["mlserver", "triton"],
                   help="the other servers (default: both; --peers alone: none)")
    p.add_argument("--mlserver-python", type=Path, default=Path(".venv-peer/bin/python"),
                   help="the Python of the venv with MLServer (make bench-peer makes it)")
    p.add_argument("--triton-python", type=Path, default=Path(".venv-triton/bin/python"),
                   help="the Python of the venv with PyTriton (make bench-peer makes it)")
    p.add_argument("--workers", nargs="+", default=["1", "auto"], metavar="N",
                   help="fmnist-serve's --workers, one server each (default: 1 auto)")
    p.add_argument("--callers", nargs="+", type=int, default=[1, 8, 32, 64], metavar="N")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=2.0)
    return p


def venv_python(python: Path, what: str) -> Path:
    if not python.exists():
        raise SystemExit(f"{python} not found: run `make bench-peer` (it creates the venv with "
                         f"{what}) or pass its Python")
    return python.absolute()  # not resolved: the venv's bin/ is where its scripts are


class Peer:
    """Another server, as a child process with its log in a file; `grpc_port` speaks KServe v2."""

    name = ""

    def __init__(self, command: list[str], cwd: Path, log: Path):
        self.log_path = log
        self.log = open(log, "w+")
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, models: list[str], timeout: float = 300) -> None:
        give_up = time.monotonic() + timeout
        while not models_ready(self.grpc_port, models):
            if self.proc.poll() is not None or time.monotonic() > give_up:
                self.log.seek(0)
                raise SystemExit(f"{self.name} did not come up:\n" + self.log.read()[-3000:])
            time.sleep(0.5)

    def failures(self) -> float:
        return 0.0  # what the server counts as failed, where it says

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


class MLServer(Peer):
    """`mlserver start` over a folder with one model-settings.json per model."""

    name = "MLServer"

    def __init__(self, python: Path, files: dict[str, Path], args, threads: int, root: Path):
        self.grpc_port = free_port()
        (root / "settings.json").write_text(json.dumps({
            "http_port": free_port(), "grpc_port": self.grpc_port, "metrics_port": free_port(),
            "debug": False}))
        for name, model_file in files.items():
            folder = root / name
            folder.mkdir()
            (folder / "peer_runtime.py").write_text((REPO / "bench" / "peer_runtime.py").read_text())
            (folder / "model-settings.json").write_text(json.dumps({
                "name": name, "implementation": "peer_runtime.OnnxRuntime",
                "max_batch_size": args.max_batch, "max_batch_time": args.delay_ms / 1000,
                "parameters": {"uri": str(model_file.resolve()),
                               "extra": {"intra_op_threads": threads}}}))
        super().__init__([str(python.parent / "mlserver"), "start", str(root)], root,
                         root / "mlserver.log")


class Triton(Peer):
    """bench/peer_triton.py: Triton's core with the models bound as PyTriton callables."""

    name = "Triton"

    def __init__(self, python: Path, files: dict[str, Path], args, threads: int, root: Path):
        self.grpc_port, self.metrics_port = free_port(), free_port()
        command = [str(python), str(REPO / "bench" / "peer_triton.py"),
                   "--grpc-port", str(self.grpc_port), "--http-port", str(free_port()),
                   "--metrics-port", str(self.metrics_port), "--max-batch", str(args.max_batch),
                   "--delay-ms", str(args.delay_ms), "--threads", str(threads)]
        for name, model_file in files.items():
            command += ["--model", f"{name}={model_file.resolve()}"]
        super().__init__(command, root, root / "triton.log")

    def failures(self) -> float:
        """nv_inference_request_failure, summed over models."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=30) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("nv_inference_request_failure{"))


def models_ready(port: int, models: list[str]) -> bool:
    import grpc
    from inference import grpc_service_pb2 as v2
    from inference import grpc_service_pb2_grpc as v2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return all(stub.ModelReady(v2.ModelReadyRequest(name=m), timeout=5).ready
                       for m in models)
        except grpc.RpcError:
            return False


def server_metadata(port: int) -> str:
    """The server's own name and version (KServe v2 ServerMetadata), e.g. "triton 2.51.0"."""
    import grpc
    from inference import grpc_service_pb2 as v2
    from inference import grpc_service_pb2_grpc as v2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = v2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
            v2.ServerMetadataRequest(), timeout=30)
    return f"{answer.name} {answer.version}"


def v2_request(model: str, pixels):
    """One raw uint8 image, the probabilities output, no version (each server's own default)."""
    from inference import grpc_service_pb2 as v2
    request = v2.ModelInferRequest(model_name=model)
    side = contract.SIDE
    request.inputs.add(name=contract.INPUT, datatype="UINT8", shape=[1, 1, side, side])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(pixels[:1].tobytes())
    return request


def peer_cell(peer: Peer, request, callers: int, seconds: float) -> dict:
    """One h2load cell on a peer: a stub's reply first, its failure count after."""
    from bench.serve import check_reply
    check_reply(peer.grpc_port, "v2", request)
    before = peer.failures()
    beside = Neighbours(peer.proc.pid)
    cell = h2load(peer.grpc_port, PATHS["v2"], frame(request), callers, seconds)
    cell["others_cores"] = beside.cores()
    if peer.failures() > before + callers:  # h2load resets the calls in flight when it stops
        raise SystemExit(f"{peer.name}: {peer.failures() - before:.0f} failed requests")
    return cell


def start(args, files: dict[str, Path], folders: dict[str, Path], tmp: Path, threads: int):
    """Every server of the comparison, started and ready: [(name, workers, server)]."""
    servers = []
    try:
        if "mlserver" in args.peers:
            servers.append(("MLServer", "-", MLServer(venv_python(args.mlserver_python, "MLServer"),
                                                      files, args, threads, tmp / "mlserver")))
        if "triton" in args.peers:
            servers.append(("Triton", "-", Triton(venv_python(args.triton_python, "PyTriton"),
                                                  files, args, threads, tmp / "triton")))
        for workers in args.workers:
            servers.append(("fmnist-serve", workers, ServerProcess(
                folders, "cpu", ["--max-batch", str(args.max_batch), "--max-queue-delay-ms",
                                 str(args.delay_ms), "--workers", workers], metrics=True)))
        for _, _, server in servers:
            if isinstance(server, Peer):
                server.wait(list(files))
            else:
                server.wait()
    except BaseException:
        stop(servers)
        raise
    return servers


def stop(servers) -> int:
    """Stop them all; 1 when an fmnist-serve did not exit 0 on SIGTERM."""
    codes = [server.stop() for _, _, server in servers]
    return int(any(code not in (None, 0) for code in codes))


def measure(servers, models: dict, pixels, args) -> list[dict]:
    rows = []
    for name in models:
        request = v2_request(name, pixels)
        for callers in args.callers:
            for server_name, workers, server in servers:
                cell = (measured(server, "v2", request, callers, args.seconds, 1)
                        if server_name == "fmnist-serve"
                        else peer_cell(server, request, callers, args.seconds))
                rows.append({"model": name, "server": server_name, "workers": workers,
                             "callers": callers, **cell})
                print(f"  {name} {server_name} {workers}: {callers} caller(s): "
                      f"{cell['images_per_s']:.0f} img/s, p50 {cell['p50_ms']:.2f} ms, "
                      f"p99 {cell['p99_ms']:.2f} ms{flag(cell)}", flush=True)
    return rows


AGREE = 0.15  # a cell and the same server measured alone may differ by this share at most


def alone(servers, rows: list[dict], pixels, args) -> dict:
    """The check that a cell tells the truth: fmnist-serve's cell (first --workers setting, first
    model, the caller count nearest 32) measured again with every other server stopped, as a
    person would measure it with h2load; the two must agree within AGREE."""
    target = next(s for n, w, s in servers if n == "fmnist-serve" and w == args.workers[0])
    model, callers = rows[0]["model"], min(args.callers, key=lambda c: abs(c - 32))
    cell = next(r for r in rows if (r["model"], r["server"], r["workers"], r["callers"])
                == (model, "fmnist-serve", args.workers[0], callers))
    for _, _, server in servers:
        if server is not target:
            server.stop()
    again = measured(target, "v2", v2_request(model, pixels), callers, args.seconds, 1)
    ratio = cell["images_per_s"] / again["images_per_s"]
    check = {"model": model, "callers": callers, "workers": args.workers[0],
             "cell_images_per_s": cell["images_per_s"], "alone_images_per_s":
             again["images_per_s"], "ratio": ratio, "agree": abs(ratio - 1) <= AGREE}
    print(f"check: {model} fmnist-serve workers {args.workers[0]}, {callers} callers: the cell "
          f"{cell['images_per_s']:,.0f} img/s, the same server alone {again['images_per_s']:,.0f}"
          f"{flag(again)}: {ratio:.2f} ({'agree' if check['agree'] else 'DISAGREE'} within "
          f"{AGREE:.0%})", flush=True)
    return check


def report(rows: list[dict], models: dict, args) -> list[dict]:
    from cli_text import format_table
    columns = [(k, h, s) for k, h, s in (("model", "model", ""), ("server", "server", ""),
                                         ("workers", "workers", ""), ("callers", "callers", "d"),
                                         ("images_per_s", "img/s", ".0f"),
                                         ("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"),
                                         ("others_cores", "others' cores", ".2f"))]
    print("\n" + format_table(rows, columns) + "\n")
    found = []
    for name in models:
        at32 = {(r["server"], r["workers"]): r for r in rows
                if r["model"] == name and r["callers"] == 32}
        auto = at32.get(("fmnist-serve", args.workers[-1]))
        for peer, target in (("Triton", ">= 1.2"), ("MLServer", "-")):
            if auto and (peer, "-") in at32:
                value = auto["images_per_s"] / at32[(peer, "-")]["images_per_s"]
                found.append({"model": name, "ratio": f"32 callers fmnist-serve workers "
                                                      f"{args.workers[-1]} / {peer}",
                              "value": value, "target": target})
                verdict = ("no target" if target == "-" else
                           "met" if value >= float(target.split()[1]) else "NOT met")
                print(f"{name}: {found[-1]['ratio']} = {value:.2f} (target {target}: {verdict})")
    return found


def main(args: argparse.Namespace) -> int:
    from server.workers.cores import usable_cores

    require_h2load()
    models = pick_models(args.models_dir, args.models)
    files = {n: d / str(v) / contract.MODEL_FILE for n, (v, d) in models.items()}
    folders = {n: d / str(v) for n, (v, d) in models.items()}
    pixels, _ = sample_images()
    cores = usable_cores()
    load_before = results.announce_machine(cores)
    print(f"models: {', '.join(models)}; max batch {args.max_batch}, {args.delay_ms:g} ms on all; "
          f"{args.seconds:g} s per cell; callers {args.callers}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for peer in args.peers:
            (Path(tmp) / peer).mkdir()
        servers = start(args, files, folders, Path(tmp), cores.usable)
        try:
            versions = {name: server_metadata(server.grpc_port if isinstance(server, Peer)
                                              else server.port) for name, _, server in servers}
            print("servers: " + ", ".join(f"{n}: {v}" for n, v in versions.items()), flush=True)
            rows = measure(servers, models, pixels, args)
            check = alone(servers, rows, pixels, args)
        finally:
            status = stop(servers)
    found = report(rows, models, args)
    status = max(status, int(not check["agree"]))
    load_after = os.getloadavg()
    print(f"load average after (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load_after)}")
    path = results.write("peer", {"rows": rows, "ratios": found, "seconds": args.seconds,
                                  "max_batch": args.max_batch, "delay_ms": args.delay_ms,
                                  "usable_cores": cores.usable, "load_before": load_before,
                                  "load_after": load_after, "versions": versions, "check": check},
                         args.artifacts)
    print(f"written: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
