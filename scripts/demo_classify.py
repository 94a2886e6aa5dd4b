"""Serve a models folder, classify samples/ with every model as a user would: `make demo`'s last step.

    python scripts/demo_classify.py --models-dir artifacts/models --samples samples --device auto

Starts `python -m server --port 0` in the background, waits (bounded) for its health to be SERVING,
classifies every image of the samples folder with every listed model through the client's
modules (client/), prints a summary (model, version, provider, test accuracy, samples right), then stops
the server with SIGTERM and checks that it exited 0. Exit status 0 only if every step worked.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # works without the venv's .pth too
    sys.path.insert(0, str(REPO))

from client import ClientError  # noqa: E402
from client import predict  # noqa: E402 - its _IMPORT_ERROR says whether grpc and the stubs import
from client.inputs import require_images  # noqa: E402
from client.rpc_errors import describe_rpc_error  # noqa: E402


class DemoError(Exception):
    pass


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/demo_classify.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=Path("artifacts/models"),
                   help="folder of <name>/<version>/model.onnx (default: artifacts/models)")
    p.add_argument("--samples", type=Path, default=REPO / "samples",
                   help="folder with images and index.json (file -> class_id) (default: samples)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--start-timeout", type=float, default=300.0,
                   help="seconds to wait for the server to load its models and be SERVING")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per RPC")
    return p


class BackgroundServer:
    """`python -m server --port 0` with JSON logs; its log lines are echoed as `server: ...`."""

    def __init__(self, models_dir: Path, device: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--models-dir", str(models_dir), "--port", "0",
             "--metrics-port", "0", "--http-port", "0",
             "--device", device, "--log-format", "json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port: int | None = None
        self.last_error = ""  # the server's own reason when it cannot start
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # onnxruntime's own messages are not JSON
                print(f"server: {line.rstrip()}", file=sys.stderr)
                continue
            print(f"server: {record.get('level', '')} {record.get('message', '')}", file=sys.stderr)
            if record.get("level") == "ERROR":
                self.last_error = record.get("message", "")
            if "port" in record and "listening on" in record.get("message", ""):
                self.port = int(record["port"])
                self.listening.set()
        self.listening.set()  # the process ended: stop waiting

    def wait_until_serving(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        if not self.listening.wait(timeout):
            raise DemoError(f"the server did not start listening within {timeout:g}s")
        if self.port is None:  # it ended before listening: say why, in its own words
            status = self.proc.wait(30)
            raise DemoError(f"the server exited with status {status}: "
                            f"{self.last_error or 'see its log above'}")
        address = f"127.0.0.1:{self.port}"
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return address
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise DemoError(f"the server at {address} was not SERVING within {timeout:g}s")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise DemoError(f"the server did not exit within {timeout:g}s of SIGTERM") from None


def classify_samples(address: str, samples: Path, timeout: float) -> list[dict]:
    """Every listed model on every sample: one summary row per model."""
    expected = {name: entry["class_id"]
                for name, entry in json.loads((samples / "index.json").read_text()).items()}
    from client.channel import connect
    from client.classify import classify
    from client.models import list_models

    images = require_images([samples])
    stub = connect(address)
    try:
        listing = list_models(stub, timeout)  # never empty: the server needs a model to start
        rows = []
        for m in listing.models:
            answer = classify(stub, images, model=m.name, version=m.version, timeout=timeout)
            if answer.failure is not None:
                raise answer.failure
            right = sum(r["predictions"][0]["class_id"] == expected.get(Path(r["file"]).name)
                        for r in answer.results)
            rows.append({"model": m.name, "version": m.version, "provider": m.provider,
                         "test_accuracy": m.test_accuracy, "test_images": m.test_images,
                         "right": right,
                         "samples": sum(Path(r["file"]).name in expected for r in answer.results)})
        return rows
    finally:
        stub.channel.close()


def format_summary(rows: list[dict]) -> str:
    table = [("model", "version", "provider", "test acc", "on images", "samples right")] + [
        (r["model"], str(r["version"]), r["provider"], f"{r['test_accuracy']:.4f}",
         str(r["test_images"] or "?"), f"{r['right']}/{r['samples']}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def main(args: argparse.Namespace) -> int:
    if predict._IMPORT_ERROR is not None:
        print(f"error: the gRPC client cannot be imported ({predict._IMPORT_ERROR}): "
              "run `make install`", file=sys.stderr)
        return 1
    server = BackgroundServer(args.models_dir, args.device)
    rows, failure = [], None
    try:
        address = server.wait_until_serving(args.start_timeout)
        rows = classify_samples(address, args.samples, args.timeout)
    except (DemoError, ClientError) as e:
        failure = str(e)
    except predict.grpc.RpcError as e:
        failure = describe_rpc_error(e, f"127.0.0.1:{server.port}", args.timeout)
    finally:
        try:
            rc = server.stop()
        except DemoError as e:
            rc, failure = None, failure or str(e)
    if rows:
        print(format_summary(rows))
    if failure is None and rc != 0:
        failure = f"the server exited with status {rc} after SIGTERM (expected 0)"
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print(f"server stopped cleanly (exit 0) after classifying {len(rows)} model(s) x "
          f"{rows[0]['samples'] if rows else 0} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
