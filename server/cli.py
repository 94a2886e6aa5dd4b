"""`python -m server`: serve the models of a folder over gRPC and HTTP until SIGTERM/SIGINT.

    python -m server --models-dir artifacts/models --port 50051 --device auto
    python -m server --port 0 --log-format json        # a free port, logged as {"port": ...}
    python -m server --http-port 8080                  # the page at http://127.0.0.1:8080/
    python -m server --model-version resnet18=2 --model-version lenet=1
    python -m server --max-batch 64 --max-queue-delay-ms 4 --batching lenet_bn=256:1

Exit status: 0 after a clean stop (signal -> drain -> exit), 1 when it cannot start as asked.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import tempfile
import threading
from pathlib import Path

from cli_text import HelpFormatter, add_version
from model_contract import default_models_dir
from server import logs, process
from server.api import security
from server.api.grpc.transport import Transport
from server.batching.batcher import BatchPolicy
from server.dataplane.types import Batching, Limits
from server.errors import StartupError
from server.models.providers import DEVICES
from server.models.scan import parse_version_flags
from server.workers.cores import parse_workers

log = logging.getLogger("server")

# Python runs a signal's handler in the main thread, and only once that thread runs bytecode: a
# SIGTERM that the kernel hands to another thread (grpc's, onnxruntime's) leaves a main thread
# blocked in a long wait unaware until the wait ends. So the main thread waits in short steps.
SIGNAL_POLL = 0.25
RESERVED_FDS = 512  # file descriptors kept from --max-connections' default
MAX_CONNECTIONS = 4096  # --max-connections' default at most, per port

_DEFAULTS = Limits()
_BATCH = BatchPolicy()
_TRANSPORT = Transport()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def parse_batching_flag(text: str) -> tuple[str, int, float]:
    """"resnet18=64:4" -> ("resnet18", 64, 0.004): a model's max batch and queue delay in ms."""
    name, sep, policy = text.partition("=")
    batch, colon, delay = policy.partition(":")
    try:
        max_batch, delay_ms = int(batch), float(delay)
    except ValueError:
        max_batch, delay_ms = 0, -1.0
    if not (sep and colon and name and max_batch >= 1 and delay_ms >= 0):
        raise argparse.ArgumentTypeError(
            f"--batching takes NAME=MAX_BATCH:DELAY_MS, e.g. resnet18=64:4; got {text!r}")
    return name, max_batch, delay_ms / 1000


def _version_flag(text: str) -> str:
    try:
        parse_version_flags([text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--models-dir", type=Path, default=default_models_dir(),
                   help="folder of <name>/<version>/model.onnx ($ARTIFACTS/models)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=50051, help="port to listen on; 0 picks a free one")
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="serve Prometheus /metrics on --host at this port; 0: no metrics")
    p.add_argument("--http-port", type=int, default=8000,
                   help="serve HTTP on --host at this port: the page at /, KServe v2 REST "
                        "(/v2/...), /v1/models/NAME:classify, /openapi.json "
                        "(docs/serving.md 'HTTP'); 0: no HTTP")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA when it comes up, else CPU (logged); cuda: fail without CUDA")
    p.add_argument("--cuda-tf32", action="store_true",
                   help="run fp32 convolutions and matrix products on TF32 tensor cores (faster on "
                        "Ampere and newer; 10-bit mantissa): fp32 probes are then held to 1e-2 "
                        "instead of 1e-3 (default: full fp32, use_tf32=0; docs/gpu.md)")
    p.add_argument("--model-version", action="append", default=[], type=_version_flag,
                   metavar="NAME=VERSION",
                   help="serve this version of NAME instead of its newest (repeatable)")
    p.add_argument("--max-images-per-request", type=_positive_int,
                   default=_DEFAULTS.max_images_per_request, help="more is INVALID_ARGUMENT")
    p.add_argument("--max-image-pixels", type=_positive_int, default=_DEFAULTS.max_image_pixels,
                   help="width x height limit per encoded image, checked before decoding")
    p.add_argument("--max-message-bytes", type=_positive_int, default=_DEFAULTS.max_message_bytes,
                   help="gRPC message size limit, both directions")
    p.add_argument("--max-request-pixels", type=_positive_int,
                   default=_DEFAULTS.max_request_pixels,
                   help="width x height summed over one request's encoded images; more is "
                        "INVALID_ARGUMENT, checked before decoding")
    p.add_argument("--max-decoding-pixels", type=_positive_int,
                   default=_DEFAULTS.max_decoding_pixels,
                   help="pixels being decoded at once, server-wide (decoding costs up to ~4 bytes "
                        "a pixel); decodes beyond it wait, then RESOURCE_EXHAUSTED")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="threads decoding images (per worker); 0: usable cores / --workers")
    p.add_argument("--max-in-flight", type=_positive_int, default=_DEFAULTS.max_in_flight,
                   help="Classify requests worked on at once; more is RESOURCE_EXHAUSTED")
    b = p.add_argument_group("dynamic batching (per model version; docs/serving.md)")
    b.add_argument("--max-batch", type=_positive_int, default=_BATCH.max_batch,
                   help="most images run together in one batch")
    b.add_argument("--max-queue-delay-ms", type=float, default=_BATCH.max_delay * 1000,
                   help="longest an image waits, once the model is free, for the batch to fill "
                        "up to the load seen (so a lone caller never waits)")
    b.add_argument("--max-queue-images", type=_positive_int, default=_BATCH.max_queue_images,
                   help="images waiting per model; more is RESOURCE_EXHAUSTED with a retry hint")
    b.add_argument("--batching", action="append", default=[], type=parse_batching_flag,
                   metavar="NAME=MAX_BATCH:DELAY_MS",
                   help="per-model override of --max-batch and --max-queue-delay-ms (repeatable)")
    p.add_argument("--poll-seconds", type=_seconds, default=5.0,
                   help="check the models folder this often: new versions are loaded, verified "
                        "and served, removed ones unloaded (0: never)")
    p.add_argument("--keep-versions", type=_positive_int, default=1,
                   help="versions of each model kept loaded as new ones arrive (older ones are "
                        "drained and unloaded)")
    p.add_argument("--unready-while-loading", action="store_true",
                   help="report not ready (health NOT_SERVING, /v2/health/ready 503) while a new "
                        "version loads, so that a balancer sends the traffic to the other "
                        "replicas meanwhile; the loaded versions keep answering")
    p.add_argument("--allow-unverified", action="store_true",
                   help="serve a model file without its probe (fmnist.probe), which the server "
                        "cannot check answers as exported; logged and listed as unverified "
                        "(default: such a file is refused)")
    p.add_argument("--allow-empty", action="store_true",
                   help="start even when no model can be served, health NOT_SERVING until one "
                        "is (with --poll-seconds); default: exit 1")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="onnxruntime threads per run (per worker); 0: usable cores / --workers")
    p.add_argument("--share-weights", choices=("on", "off"), default="on",
                   help="on: CPU sessions load a per-host cached, onnxruntime-optimized copy of "
                        "each model whose weights are memory-mapped, so --workers processes "
                        "share them instead of holding a copy each (docs/serving.md#workers)")
    p.add_argument("--weights-cache", type=Path, metavar="DIR",
                   default=Path(tempfile.gettempdir()) / f"fmnist-serve-weights-{os.getuid()}",
                   help="where --share-weights keeps its copies (made once per model file, "
                        "onnxruntime version and CPU; unused ones go after a week)")
    p.add_argument("--spinning", action="store_true",
                   help="let onnxruntime's threads spin between runs (lower latency when the "
                        "server has cores to spare; steals them from decoding otherwise)")
    t = p.add_argument_group("transport")
    t.add_argument("--request-read-timeout", type=_seconds,
                   default=_TRANSPORT.request_read_timeout_seconds,
                   help="seconds from a call's start until its request message must have arrived")
    t.add_argument("--keepalive-seconds", type=_seconds, default=_TRANSPORT.keepalive_seconds,
                   help="ping idle connections this often; unanswered pings close them")
    t.add_argument("--max-connection-idle-seconds", type=_seconds,
                   default=_TRANSPORT.max_connection_idle_seconds,
                   help="close connections without calls (gRPC) or requests (HTTP) for this "
                        "long; 0: never")
    t.add_argument("--max-connections", type=_positive_int, metavar="N",
                   help="connections open at once on each port (gRPC, HTTP); more are closed as "
                        "they arrive (default: from the process's file limit, raised to its hard "
                        f"limit: half each, less {RESERVED_FDS} for models, logs and threads; at "
                        f"most {MAX_CONNECTIONS})")
    t.add_argument("--max-connection-age-seconds", type=_seconds,
                   default=_TRANSPORT.max_connection_age_seconds,
                   help="close connections this old (clients reconnect; spreads load behind a "
                        "balancer); 0: never")
    w = p.add_argument_group("workers (docs/serving.md#workers)")
    w.add_argument("--workers", type=parse_workers, default=1,
                   help="server processes sharing --port (SO_REUSEPORT), started and watched by "
                        "this one: one /metrics and one health answer for all; auto: one per "
                        "usable core (CPU affinity and cgroup quota)")
    w.add_argument("--max-worker-rss-mb", type=_positive_int,
                   help="replace a worker whose resident memory passes this many MiB (its "
                        "replacement serves before it drains; also with --workers 1)")
    security.add_args(p)
    p.add_argument("--otlp-endpoint", metavar="URL",
                   help="trace requests and batches with OpenTelemetry, exporting to this OTLP "
                        "collector (as OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://127.0.0.1:4317); "
                        "default: off unless the OTEL_* variables turn it on "
                        "(docs/serving.md 'Observability')")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds requests in flight get to finish after SIGTERM/SIGINT")
    p.add_argument("--log-format", choices=logs.FORMATS, default="text",
                   help="text: one readable line per event; json: one JSON object per line")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="the least severe messages to log")
    return p


def main(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    process.raise_file_limit()
    process.return_freed_memory()
    try:  # after logging is set up: importing grpc can log
        from server.app import create_server
        from server.workers import cores, supervisor, worker
    except ImportError as e:
        log.error("cannot start: %s: the gRPC stubs or packages are missing; run `make install`", e)
        return 1
    plan = cores.plan(args)
    if worker.is_worker():
        worker.tag_logs()
    else:
        log.info("%s", plan)
    if supervisor.supervises(args, plan):
        return supervisor.supervise(args, plan, sys.argv[1:])
    try:
        config = server_config(args, plan)
        log.info("starting: models_dir=%s device=%s limits=%s batching=%s", args.models_dir,
                 args.device, config.limits, config.batching)
        log.info("at most %d connections per port (--max-connections)",
                 config.transport.max_connections)
        server, port = create_server(args.models_dir, config=config)
    except (StartupError, ValueError) as e:
        log.error("cannot start: %s", e)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: _on_signal(signum, stop, server, args.grace))
    server.start()
    process.freeze_startup_objects()
    if worker.is_worker():  # its parent says when the port is served
        return worker.serve(server, stop, args.grace, args.max_connection_age_seconds)
    models = server.core.list_models()
    log.info("listening on %s (health %s) with %d model(s): %s", server.address,
             "SERVING" if models else "NOT_SERVING until a model is served", len(models),
             ", ".join(f"{m.name} v{m.version} [{m.provider}]" for m in models) or "none",
             extra={"host": args.host, "port": port})
    while not stop.wait(SIGNAL_POLL):
        pass
    finished = server.stop(args.grace)
    log.info("stopped%s", "" if finished else " (some requests were cut off by the grace period)")
    return 0


def server_config(args: argparse.Namespace, plan=None):
    """The parsed flags as the server's configuration (`plan`: cores.plan(args), the thread
    counts); ValueError when they cannot work together."""
    from server.app import ServerConfig
    from server.dataplane import tracing
    from server.models.runner import OnnxRunner
    from server.workers import cores
    from server.workers.worker import http_sockets, is_worker, slot

    plan = plan or cores.plan(args)
    worker = is_worker()  # metrics on a private port, which the parent adds up

    limits = Limits(max_images_per_request=args.max_images_per_request,
                    max_image_pixels=args.max_image_pixels,
                    max_request_pixels=args.max_request_pixels,
                    max_decoding_pixels=args.max_decoding_pixels,
                    max_message_bytes=args.max_message_bytes, max_in_flight=args.max_in_flight,
                    decode_threads=plan.decode_threads)
    transport = Transport(request_read_timeout_seconds=args.request_read_timeout,
                          keepalive_seconds=args.keepalive_seconds,
                          max_connection_idle_seconds=args.max_connection_idle_seconds,
                          max_connection_age_seconds=args.max_connection_age_seconds,
                          max_connections=args.max_connections or default_max_connections())
    return ServerConfig(
        host=args.host, port=args.port, device=args.device, cuda_tf32=args.cuda_tf32,
        versions=parse_version_flags(args.model_version), limits=limits, batching=_batching(args),
        transport=transport, security=security.from_args(args),
        metrics_port=0 if worker else args.metrics_port or None,
        http_port=args.http_port or None,
        metrics_host="127.0.0.1" if worker else None, worker=worker,
        http_sockets=http_sockets() if worker else (),
        poll_seconds=args.poll_seconds,
        keep_versions=args.keep_versions, allow_unverified=args.allow_unverified,
        allow_empty=args.allow_empty, unready_while_loading=args.unready_while_loading,
        tracing=tracing.from_environment(os.environ, args.otlp_endpoint, slot()),
        runner_factory=lambda path, providers: OnnxRunner(
            path, providers, plan.intra_op_threads, args.spinning,
            args.weights_cache if args.share_weights == "on" else None))


def default_max_connections() -> int:
    """--max-connections by default: of the files this process may open, RESERVED_FDS for its
    models, logs, threads and scans, half the rest for each port, so both ports full still leave
    it able to work (and never at EMFILE, where accepting fails over and over); at most
    MAX_CONNECTIONS, since each connection holds memory (measured: ~12 KB a gRPC one, ~6 KB an
    HTTP one, kept by the allocator for reuse after they close)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, min(MAX_CONNECTIONS, (soft - RESERVED_FDS) // 2))


def _batching(args: argparse.Namespace) -> Batching:
    """The batching flags as policies; ValueError when they cannot work together."""
    def policy(max_batch: int, delay: float) -> BatchPolicy:
        if args.max_queue_images < max_batch:
            raise ValueError(f"--max-queue-images {args.max_queue_images} is below a max batch "
                             f"of {max_batch}: a full batch could never queue")
        return BatchPolicy(max_batch, delay, args.max_queue_images)

    if args.max_queue_delay_ms < 0:
        raise ValueError(f"--max-queue-delay-ms must be >= 0, got {args.max_queue_delay_ms}")
    if args.max_queue_images < args.max_images_per_request:
        raise ValueError(f"--max-queue-images {args.max_queue_images} is below "
                         f"--max-images-per-request {args.max_images_per_request}: the largest "
                         "request could never queue")
    return Batching(policy(args.max_batch, args.max_queue_delay_ms / 1000),
                    {name: policy(b, d) for name, b, d in args.batching})


def _on_signal(signum: int, stop: threading.Event, server, grace: float) -> None:
    """The first signal drains (at most `grace` seconds, then a watchdog exits 1 s later whatever
    is still stuck); a second one exits at once. Both say how many requests they cut off."""
    name = signal.Signals(signum).name
    if stop.is_set():
        _exit_now(f"{name} received again", server)
    log.info("%s received: draining", name)
    stop.set()
    cut_off = threading.Timer(grace, _log_cut_off, (server, grace))
    cut_off.daemon = True
    cut_off.start()
    watchdog = threading.Timer(grace + 0.9, _exit_now,
                               (f"not stopped {grace:g} s (--grace) + 0.9 s after {name}", server))
    watchdog.daemon = True
    watchdog.start()


def _log_cut_off(server, grace: float) -> None:
    """When the grace period ends, what it cuts off (Server.stop counts only after the cut)."""
    if server.core.in_flight:
        log.warning("--grace %gs is over: cutting off %d request(s) still in flight", grace,
                    server.core.in_flight)


def _exit_now(why: str, server) -> None:
    log.warning("%s: exiting now, cutting off %d request(s) in flight", why, server.core.in_flight)
    logging.shutdown()
    os._exit(1)
