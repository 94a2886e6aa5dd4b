"""`make bench-peer`: fmnist-serve against MLServer, the same model.onnx behind both, one run.

MLServer 1.7 (in its own venv, .venv-peer) serves the model through bench/peer_runtime.py, a
minimal onnxruntime runtime, with its adaptive batching at the same settings as ours (max batch
32, 2 ms). One load generator, tritonclient's asyncio gRPC client over KServe v2 ModelInfer,
drives both the same way: 1, 8 and 32 concurrent callers of single images, a closed loop per
caller, --seconds per cell, MLServer and fmnist-serve alternating per cell. Printed: img/s,
p50/p99 for both and the ratios (fmnist-serve / MLServer).

    make bench-peer MODELS=resnet18          # sets up .venv-peer on first use
    python -m bench.peer --models resnet18 --peer-python .venv-peer/bin/python

Nothing here imports torch. Results also go to $ARTIFACTS/bench/peer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.serve import ServerProcess, drive, pick_models, sample_images

REPO = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18"], metavar="NAME",
                   help="models to compare (default: resnet18)")
    p.add_argument("--models-dir", type=Path,
                   default=results.default_artifacts() / "models",
                   help="exported models (default: $ARTIFACTS/models or artifacts/models)")
    p.add_argument("--artifacts", type=Path, default=results.default_artifacts(),
                   help="where bench/peer.json is written (default: $ARTIFACTS or artifacts)")
    p.add_argument("--peer-python", type=Path, default=Path(".venv-peer/bin/python"),
                   help="the Python of the venv that has MLServer (make bench-peer makes it)")
    p.add_argument("--callers", nargs="+", type=int, default=[1, 8, 32], metavar="N")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=2.0)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLServerProcess:
    """`mlserver start` over a folder with one model-settings.json per model."""

    def __init__(self, python: Path, models: dict[str, Path], max_batch: int, delay_ms: float):
        if not python.exists():
            raise SystemExit(f"{python} not found: run `make bench-peer` (it creates .venv-peer "
                             "with MLServer) or pass --peer-python")
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-peer-")
        root = Path(self._tmp.name)
        self.grpc_port = free_port()
        (root / "settings.json").write_text(json.dumps({
            "http_port": free_port(), "grpc_port": self.grpc_port, "metrics_port": free_port(),
            "debug": False}))
        for name, model_file in models.items():
            folder = root / name
            folder.mkdir()
            (folder / "peer_runtime.py").write_text((REPO / "bench" / "peer_runtime.py").read_text())
            (folder / "model-settings.json").write_text(json.dumps({
                "name": name, "implementation": "peer_runtime.OnnxRuntime",
                "max_batch_size": max_batch, "max_batch_time": delay_ms / 1000,
                "parameters": {"uri": str(model_file.resolve())}}))
        self.log = open(root / "mlserver.log", "w+")
        self.proc = subprocess.Popen([str(python.parent / "mlserver"), "start", str(root)],
                                     cwd=root, stdout=self.log, stderr=subprocess.STDOUT)

    async def wait(self, models: list[str], timeout: float = 180) -> None:
        import tritonclient.grpc.aio as tc
        give_up = time.monotonic() + timeout
        async with tc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}") as client:
            while True:
                try:
                    if all([await client.is_model_ready(m) for m in models]):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if self.proc.poll() is not None or time.monotonic() > give_up:
                    self.log.seek(0)
                    raise SystemExit("MLServer did not come up:\n" + self.log.read()[-3000:])
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self._tmp.cleanup()


async def v2_closed_loop(port: int, model: str, image: np.ndarray, callers: int,
                         seconds: float) -> dict:
    """ModelInfer (one image, the probabilities output) driven by bench.serve's `drive`."""
    import tritonclient.grpc.aio as tc
    async with tc.InferenceServerClient(f"127.0.0.1:{port}") as client:
        def infer():
            tensor = tc.InferInput("image", list(image.shape), "UINT8")
            tensor.set_data_from_numpy(image)
            return client.infer(model, [tensor], client_timeout=60,
                                outputs=[tc.InferRequestedOutput("probabilities")])

        return await drive(infer, callers, seconds, len(image))


def main(args: argparse.Namespace) -> int:
    models = pick_models(args.models_dir, args.models)
    files = {n: d / str(v) / "model.onnx" for n, (v, d) in models.items()}
    pixels, _ = sample_images()
    image = pixels[:1, None].copy()  # uint8 [1, 1, 28, 28]
    cpu, isa = results.cpu_info()
    print(f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores; ISA: {' '.join(isa) or 'unknown'}")
    print(f"models: {', '.join(models)}; max batch {args.max_batch}, {args.delay_ms:g} ms on both; "
          f"{args.seconds:g}s per cell; callers {args.callers}", flush=True)
    peer = MLServerProcess(args.peer_python, files, args.max_batch, args.delay_ms)
    try:
        ours = ServerProcess({n: d / str(v) for n, (v, d) in models.items()}, "cpu",
                             ["--max-batch", str(args.max_batch),
                              "--max-queue-delay-ms", str(args.delay_ms)])
    except BaseException:
        peer.stop()
        raise
    rows = []
    try:
        port = ours.wait()
        asyncio.run(peer.wait(list(models)))
        for name in models:
            for callers in args.callers:
                for server, at in (("MLServer", peer.grpc_port), ("fmnist-serve", port)):
                    cell = asyncio.run(v2_closed_loop(at, name, image, callers, args.seconds))
                    rows.append({"model": name, "server": server, "callers": callers, **cell})
                    print(f"  {name} {server}: {callers} caller(s): {cell['images_per_s']:.0f} "
                          f"img/s, p50 {cell['p50_ms']:.1f} ms, p99 {cell['p99_ms']:.1f} ms",
                          flush=True)
    finally:
        peer.stop()
        rc = ours.stop()
    print()
    print(f"{'model':<10} {'callers':>7} {'MLServer img/s':>14} {'p50':>7} {'p99':>7} "
          f"{'ours img/s':>10} {'p50':>7} {'p99':>7} {'img/s x':>7} {'p99 x':>6}")
    ratios = []
    for name in models:
        for callers in args.callers:
            a, b = (next(r for r in rows if (r["model"], r["server"], r["callers"])
                         == (name, s, callers)) for s in ("MLServer", "fmnist-serve"))
            speed, tail = b["images_per_s"] / a["images_per_s"], b["p99_ms"] / a["p99_ms"]
            ratios.append({"model": name, "callers": callers, "throughput_ratio": speed,
                           "p99_ratio": tail})
            print(f"{name:<10} {callers:>7} {a['images_per_s']:>14.0f} {a['p50_ms']:>7.1f} "
                  f"{a['p99_ms']:>7.1f} {b['images_per_s']:>10.0f} {b['p50_ms']:>7.1f} "
                  f"{b['p99_ms']:>7.1f} {speed:>7.2f} {tail:>6.2f}")
    print("\nimg/s x: fmnist-serve / MLServer (target >= 2 at 32 callers); p99 x: fmnist-serve / "
          "MLServer (target <= 0.5 at 32 callers)")
    path = results.write("peer", {"rows": rows, "ratios": ratios, "seconds": args.seconds,
                                  "max_batch": args.max_batch, "delay_ms": args.delay_ms},
                         args.artifacts)
    print(f"written: {path}")
    return 1 if rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
