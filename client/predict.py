"""Classify image files with an fmnist-serve server.

    python client/predict.py samples/ankle_boot.png --model resnet18
    python client/predict.py samples/ --top-k 3 --json
    python client/predict.py --list
    python client/predict.py samples/ --server localhost       # port 50051 when none is given
    FMNIST_SERVER=grpc://10.0.0.7:50051 python client/predict.py samples/coat.png
    python client/predict.py samples/ --server 10.0.0.7:50051,10.0.0.8:50051   # replicas
    python client/predict.py samples/ --server dns:///fmnist-grpc-headless:50051

Folders stand for the image files directly inside them (.png .jpg .jpeg .bmp .gif .webp), sorted.
Images go in batches within the limits the server reports (images and bytes per request; a batch
over its pixels per request is split). A request the server refuses for now (RESOURCE_EXHAUSTED
with a retry hint: full; UNAVAILABLE: draining or not up yet) is tried again a few times after a
random wait, at least the server's hint, within --timeout.
Several servers (a comma-separated list of IP addresses, or a dns:/// name that resolves to
several) are replicas of one service: calls go round robin to those whose health says SERVING,
and a call refused with UNAVAILABLE (a replica draining or gone) is replayed on another.
An input that cannot be used (missing, unreadable, a folder without images, a file the server
cannot decode) is named on stderr with the reason; the other images are still classified. A file
that is no PNG, JPEG, BMP, GIF or WebP by its first bytes (or empty) is named without being sent.
When a request fails halfway through (the model unloaded, the server draining), the answers
already given are printed, then the error.
Exit status: 0 when every input was classified; 1 when the server or an RPC fails (one line on
stderr); 2 for bad arguments, or when an input could not be used. Needs grpcio and protobuf only
(and the stubs `make install` makes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and Path(sys.path[0]).resolve() == _ROOT / "client":
    del sys.path[0]  # run as a script: client/'s modules are client.*, never top-level names
for _path in (_ROOT, _ROOT / "build" / "gen"):  # works even without the venv's .pth
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))

import model_contract as mc  # noqa: E402 - stdlib only at import, like cli_text
from cli_text import HelpFormatter, add_version  # noqa: E402
from client import ClientError  # noqa: E402
from client.address import DEFAULT_PORT, DEFAULT_SERVER, ENVIRONMENT, dial_target  # noqa: E402
from client.inputs import gather_images  # noqa: E402
from client.output import format_models, format_results  # noqa: E402
from client.rpc_errors import describe_rpc_error  # noqa: E402

if __name__ == "__main__":
    # grpc's C core logs to stderr on top of the one line this client prints: a failed TLS
    # handshake ("I1201 ... ssl_transport_security.cc"), a replica without the health service
    # ("E1207 ... health checking Watch method returned UNIMPLEMENTED"). A GRPC_VERBOSITY the user
    # sets still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

try:  # grpc and the generated stubs (`make install`); reported by main() in one line
    import grpc
    from client.channel import connect, new_trace
    from client.classify import classify
    from client.models import answered_near_chance, choose_model, list_models, models_dict
    _IMPORT_ERROR: ImportError | None = None
except ImportError as e:
    _IMPORT_ERROR = e

INVERSIONS = ("auto", "always", "never")


# --- command line ----------------------------------------------------------------------------

def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _version(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a version number (0: the newest), got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python client/predict.py", description=__doc__,
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--model",
                   help="model name (default: the served model with the best test accuracy it "
                        "can be sure of: the lower 95%% bound of its accuracy on the test images "
                        "it was measured on; --list shows which)")
    p.add_argument("--variant", choices=mc.VARIANTS,
                   help="a precision variant of --model, served as MODEL:VARIANT "
                        "(default: the fp32 model)")
    p.add_argument("--model-version", type=_version, default=0, metavar="N",
                   help="0: the newest the server has")
    p.add_argument("--top-k", type=int, default=1, choices=range(1, 11), metavar="1..10",
                   help="how many classes to show per image, best first")
    p.add_argument("--server", metavar="ADDRESS",
                   help=f"host[:port], port {DEFAULT_PORT} when left out; IPv6 as [::1] or "
                        f"[::1]:{DEFAULT_PORT}; also grpc:// or http:// (plaintext), grpcs:// or "
                        "https:// (TLS, with --tls-ca) before it, or a gRPC target "
                        "(dns:///host:port, unix:/path); several replicas as a list of IP "
                        f"addresses (10.0.0.7:{DEFAULT_PORT},10.0.0.8:{DEFAULT_PORT}) or a dns:/// "
                        "name: round robin over the ready ones, UNAVAILABLE replayed on another "
                        "(docs/serving.md 'Running many replicas') (default: the FMNIST_SERVER "
                        f"environment variable, else {DEFAULT_SERVER})")
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds per RPC")
    p.add_argument("--invert", choices=INVERSIONS, default="auto",
                   help="auto: invert images whose background is light")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of tables (unusable inputs under \"errors\"; the "
                        "failure that ended a run early under \"failure\"; \"near_chance\": the "
                        "model's test accuracy is under twice chance)")
    p.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="connect with TLS, trusting this CA (default: plaintext)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help="mutual TLS: this client certificate (with --tls-key and --tls-ca)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--token", help="bearer token sent with every call (default: the FMNIST_TOKEN "
                                   "environment variable)")
    p.add_argument("--trace", action="store_true",
                   help="start a trace: every call carries its W3C traceparent (sampled), and the "
                        "trace id is printed on stderr (and as \"trace_id\" with --json), to find "
                        "the server's spans with (docs/serving.md 'Observability')")
    p.add_argument("--list", action="store_true", help="list the served models and exit")
    return p


def main(args: argparse.Namespace) -> int:
    if _IMPORT_ERROR is not None:
        return _fail(f"the gRPC client cannot be imported ({_IMPORT_ERROR}): run `make install`", 1)
    if not args.list and not args.images:
        return _fail("give image files or folders, or --list", 2)
    server, named = _server(args)
    traceparent, args.trace_id = new_trace() if args.trace else (None, None)
    try:
        server = dial_target(server, tls=args.tls_ca is not None, named=named)
        stub = connect(server, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       token=args.token or os.environ.get("FMNIST_TOKEN"),
                       traceparent=traceparent)
        try:
            return _list(stub, args) if args.list else _predict(stub, args, server)
        finally:
            stub.channel.close()
            if args.trace_id:
                print(f"trace {args.trace_id}", file=sys.stderr)
    except ClientError as e:
        return _fail(str(e), e.exit_code)
    except grpc.RpcError as e:
        return _fail(describe_rpc_error(e, server, args.timeout, args.tls_ca is not None), 1)


def _server(args: argparse.Namespace) -> tuple[str, str]:
    """The address to dial as given, and how an error names it: --server, else FMNIST_SERVER,
    else the default."""
    if args.server is not None:
        return args.server, f"--server {args.server}"
    if os.environ.get(ENVIRONMENT):
        return os.environ[ENVIRONMENT], f"{ENVIRONMENT}={os.environ[ENVIRONMENT]}"
    return DEFAULT_SERVER, DEFAULT_SERVER


def _fail(message: str, exit_code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def _list(stub, args: argparse.Namespace) -> int:
    listing = list_models(stub, args.timeout)
    listed = models_dict(listing)
    print(json.dumps(listed, indent=2) if args.json else format_models(listed))
    return 0


def _predict(stub, args: argparse.Namespace, server: str) -> int:
    """Classify what can be used and print the answers; then name on stderr each input that
    could not be used (exit 2) and the failure that ended the run early, if one did (exit 1)."""
    images, unusable = gather_images(args.images)
    answer, shown = None, {"results": [], "errors": []}
    if images:
        listing = list_models(stub, args.timeout)
        answer = classify(stub, images, model=choose_model(listing, args.model, args.variant),
                          version=args.model_version, top_k=args.top_k, invert=args.invert,
                          timeout=args.timeout, listing=listing)
        if answer.failure is not None and not answer.results:
            raise answer.failure  # nothing to show: one line, as for any failed call
        shown = {**answer.as_dict(),
                 "near_chance": answered_near_chance(listing, answer.model, answer.version)}
    shown["errors"] = [u.as_dict() for u in unusable] + shown["errors"]
    failure = None
    if answer is not None and answer.failure is not None:
        failure = describe_rpc_error(answer.failure, server, args.timeout, args.tls_ca is not None)
    shown.update(server=server, failure=failure)
    if args.trace_id:
        shown["trace_id"] = args.trace_id
    if args.json:
        print(json.dumps(shown, indent=2))
    elif shown["results"]:
        print(format_results(shown))
    for error in shown["errors"]:
        print(f"error: {error['file']}: {error['error']}", file=sys.stderr)
    if failure:
        print(f"error: {failure} (after {len(shown['results'])} of {len(images)} images were "
              "classified)", file=sys.stderr)
    return 1 if failure else 2 if shown["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
