"""Classify image files with an fmnist-serve server.

    python client/predict.py samples/ankle_boot.png --model resnet18
    python client/predict.py samples/ --top-k 3 --json
    python client/predict.py --list

Folders stand for the image files directly inside them (.png .jpg .jpeg .bmp .gif .webp), sorted.
Images go in batches that respect the limits the server reports (images per request, message size).
Exit status: 0 on success; 1 when the server or an RPC fails (one line on stderr); 2 for bad
arguments or unreadable files. Needs grpcio and protobuf only (and the stubs `make install` makes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT, _ROOT / "build" / "gen"):  # works even without the venv's .pth
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))

from cli_text import HelpFormatter  # noqa: E402

try:
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    _IMPORT_ERROR: ImportError | None = None
except ImportError as e:  # reported by main() in one line
    _IMPORT_ERROR = e

DEFAULT_SERVER = "127.0.0.1:50051"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
INVERSIONS = ("auto", "always", "never")
_MESSAGE_HEADROOM = 0.9  # of the server's max message bytes, for protobuf framing and the rest
_PER_IMAGE_OVERHEAD = 16  # bytes of protobuf framing per image, generously


class ClientError(Exception):
    """A problem to report in one line (exit_code 1: server/RPC, 2: arguments/files)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ImageFile:
    path: Path
    data: bytes


# --- files -----------------------------------------------------------------------------------

def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders -> their image files (not recursive), sorted by name."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise ClientError(f"{path}: no image files ({' '.join(IMAGE_SUFFIXES)}) in this "
                                  "folder", exit_code=2)
            files.extend(inside)
        elif path.exists():
            files.append(path)
        else:
            raise ClientError(f"{path}: no such file or folder", exit_code=2)
    return files


def read_files(files: Iterable[Path]) -> list[ImageFile]:
    out = []
    for path in files:
        try:
            out.append(ImageFile(path, path.read_bytes()))
        except OSError as e:
            raise ClientError(f"{path}: cannot read it ({e.strerror or e})", exit_code=2) from None
    return out


def batches(images: list[ImageFile], max_images: int, max_bytes: int) -> Iterator[list[ImageFile]]:
    """Consecutive groups of at most `max_images` images and about `max_bytes` per message."""
    budget = int(max_bytes * _MESSAGE_HEADROOM) - 1024
    batch: list[ImageFile] = []
    size = 0
    for image in images:
        cost = len(image.data) + _PER_IMAGE_OVERHEAD
        if cost > budget:
            raise ClientError(f"{image.path}: {len(image.data):,} bytes is over what the server "
                              f"accepts in one message ({max_bytes:,} bytes)", exit_code=2)
        if batch and (len(batch) >= max_images or size + cost > budget):
            yield batch
            batch, size = [], 0
        batch.append(image)
        size += cost
    if batch:
        yield batch


# --- RPCs ------------------------------------------------------------------------------------

def connect(server: str, *, tls_ca: Path | None = None, tls_cert: Path | None = None,
            tls_key: Path | None = None, token: str | None = None):
    """A Classifier stub (the channel is `stub.channel`): TLS when `tls_ca` is given (with a
    client certificate for mutual TLS), plaintext otherwise; `token` goes with every call as
    `authorization: Bearer <token>`."""
    if tls_ca is None and (tls_cert or tls_key):
        raise ClientError("--tls-cert/--tls-key need --tls-ca (the CA of the server)", exit_code=2)
    if (tls_cert is None) != (tls_key is None):
        raise ClientError("--tls-cert and --tls-key go together", exit_code=2)
    if tls_ca is None:
        channel = grpc.insecure_channel(server)
    else:
        pems = [_read_pem(p, what) for p, what in ((tls_ca, "--tls-ca"), (tls_key, "--tls-key"),
                                                   (tls_cert, "--tls-cert"))]
        channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(*pems))
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    stub = pb_grpc.ClassifierStub(channel)
    stub.channel = channel
    return stub


def _read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientError(f"{flag} {path}: cannot read it ({e.strerror or e})",
                          exit_code=2) from None


if _IMPORT_ERROR is None:
    class _BearerToken(grpc.UnaryUnaryClientInterceptor):
        """Adds `authorization: Bearer <token>` to every call's metadata."""

        def __init__(self, token: str):
            self._entry = ("authorization", f"Bearer {token}")

        def intercept_unary_unary(self, continuation, details, request):
            metadata = [*(details.metadata or ()), self._entry]
            return continuation(details._replace(metadata=metadata), request)


def list_models(stub, timeout: float) -> pb.ListModelsResponse:
    return stub.ListModels(pb.ListModelsRequest(), timeout=timeout)


def default_model(listing: pb.ListModelsResponse) -> str:
    """The served fp32 model with the highest test accuracy (ties: the name first in order);
    precision variants only when no fp32 model is served."""
    if not listing.models:
        raise ClientError("the server serves no models (export some, then restart it)")
    fp32 = [m for m in listing.models if not m.variant] or list(listing.models)
    return min(fp32, key=lambda m: (-m.test_accuracy, m.name, -m.version)).name


def variant_name(model: str, variant: str | None) -> str:
    """The name a precision variant is served under: "resnet18" + "int8" -> "resnet18:int8"
    (docs/DESIGN.md "Precision variants")."""
    return f"{model}:{variant}" if variant else model


def classify(stub, images: list[ImageFile], *, model: str | None = None, version: int = 0,
             top_k: int = 1, invert: str = "auto", timeout: float = 30.0) -> dict:
    """Classify `images` in batches; returns the dict `--json` prints."""
    listing = list_models(stub, timeout)
    model = model or default_model(listing)
    limits = listing.limits
    inversion = {"auto": pb.INVERSION_AUTO, "always": pb.INVERSION_ALWAYS,
                 "never": pb.INVERSION_NEVER}[invert]
    results, answered = [], None
    for batch in batches(images, limits.max_images_per_request or 64,
                         limits.max_message_bytes or 4 * 1024 * 1024):
        request = pb.ClassifyRequest(model=model, version=version, top_k=top_k, inversion=inversion,
                                     images=[pb.Image(encoded=i.data) for i in batch])
        response = stub.Classify(request, timeout=timeout)
        answered = answered or (response.model, response.version)
        for image, classification in zip(batch, response.classifications):
            results.append({"file": str(image.path), "predictions": [
                {"rank": rank, "class_id": p.class_id, "label": p.label,
                 "probability": round(p.probability, 6)}
                for rank, p in enumerate(classification.predictions, 1)]})
    return {"model": answered[0], "version": answered[1], "results": results}


def describe_rpc_error(error: grpc.RpcError, server: str, timeout: float,
                       tls: bool = False) -> str:
    code, details = error.code(), error.details() or ""
    failure = _tls_failure(details, tls)
    if code == grpc.StatusCode.UNAVAILABLE and failure:
        return f"TLS with {server} failed: {failure}"
    if code == grpc.StatusCode.UNAVAILABLE and not tls and "socket closed" in details.lower():
        return (f"{server} closed the connection ({details}); if it serves TLS, give --tls-ca "
                "(and --tls-cert/--tls-key for mutual TLS)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"{server} refused the call (UNAUTHENTICATED: {details}); give a token with "
                "--token or the FMNIST_TOKEN environment variable")
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the fmnist server at {server} ({details}); is it running (make serve)?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {server} within --timeout {timeout:g}s"
    return f"{code.name}: {details}"


def _tls_failure(details: str, tls: bool) -> str | None:
    """A one-line reason for a failed TLS handshake in gRPC's (long) connection error, or None.
    With TLS 1.3 a server that refuses the client's certificate (or its absence) just closes the
    connection: on a TLS channel, "Socket closed" while connecting means that."""
    text = details.lower()
    if tls and "failed to connect" in text and "socket closed" in text:
        return ("the server closed the connection during the handshake: it requires a client "
                "certificate (--tls-cert/--tls-key) from a CA it trusts")
    if "certificate_verify_failed" in text:
        return ("the server's certificate is not signed by the --tls-ca given (or its name does "
                "not match the address)")
    if "certificate_required" in text or "peer did not return a certificate" in text:
        return "the server requires a client certificate: give --tls-cert and --tls-key"
    if any(word in text for word in ("ssl", "tls", "handshake", "tsi_")):
        return ("the TLS handshake failed (a plaintext server, a client certificate it does not "
                "accept, or a protocol mismatch)")
    return None


# --- output ----------------------------------------------------------------------------------

def format_results(answer: dict) -> str:
    lines = []
    for result in answer["results"]:
        best = result["predictions"][0]
        lines.append(f"{result['file']}: {best['label']} ({best['probability']:.1%})"
                     f"  [{answer['model']} v{answer['version']}]")
        lines.append(f"  {'rank':>4}  {'label':<12} {'probability':>11}")
        lines += [f"  {p['rank']:>4}  {p['label']:<12} {p['probability']:>11.4f}"
                  for p in result["predictions"]]
    return "\n".join(lines)


def models_dict(listing: pb.ListModelsResponse) -> dict:
    return {"models": [{"name": m.name, "version": m.version, "input_side": m.input_side,
                        "test_accuracy": m.test_accuracy, "test_images": m.test_images,
                        "provider": m.provider,
                        "probe_max_abs_diff": (m.probe_max_abs_diff
                                               if m.HasField("probe_max_abs_diff") else None),
                        "variant": m.variant or "fp32",
                        "fp32_agreement": (m.fp32_agreement if m.HasField("fp32_agreement")
                                           else None),
                        "speedup_vs_fp32": (m.speedup_vs_fp32 if m.HasField("speedup_vs_fp32")
                                            else None),
                        "labels": list(m.labels)} for m in listing.models],
            "refused": [{"name": r.name, "version": r.version, "reason": r.reason}
                        for r in listing.refused],
            "limits": {"max_images_per_request": listing.limits.max_images_per_request,
                       "max_image_pixels": listing.limits.max_image_pixels,
                       "max_message_bytes": listing.limits.max_message_bytes,
                       "max_request_pixels": listing.limits.max_request_pixels}}


def format_models(listing: pb.ListModelsResponse) -> str:
    refused = [f"not served: {r.name} v{r.version}: {r.reason}" for r in listing.refused]
    if not listing.models:
        return "\n".join(["the server serves no models", *refused])
    rows = [("model", "version", "variant", "accuracy", "on images", "input", "provider",
             "probe |Δ|", "agree fp32", "vs fp32 b32")] + [
        (m.name, str(m.version), m.variant or "fp32", f"{m.test_accuracy:.4f}",
         str(m.test_images or "?"), str(m.input_side), m.provider,
         f"{m.probe_max_abs_diff:.1e}" if m.HasField("probe_max_abs_diff") else "unverified",
         f"{m.fp32_agreement:.2%}" if m.HasField("fp32_agreement") else "-",
         _speedup(m))
        for m in listing.models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(table + refused)


def _speedup(m) -> str:
    """A variant's batch-32 speed over fp32 as the server measured it; says when it is slower."""
    if not m.HasField("speedup_vs_fp32"):
        return "-"
    return f"{m.speedup_vs_fp32:.2f}x" + (" (slower here)" if m.speedup_vs_fp32 < 1 else "")


# --- command line ----------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python client/predict.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--model", help="model name (default: the served model with the best test accuracy)")
    p.add_argument("--variant", choices=("int8", "fp16"),
                   help="a precision variant of --model, served as MODEL:VARIANT "
                        "(default: the fp32 model)")
    p.add_argument("--model-version", type=int, default=0, help="0: the newest the server has")
    p.add_argument("--top-k", type=int, default=1, choices=range(1, 11), metavar="1..10",
                   help="how many classes to show per image, best first")
    p.add_argument("--server", default=DEFAULT_SERVER, help="host:port")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per RPC")
    p.add_argument("--invert", choices=INVERSIONS, default="auto",
                   help="auto: invert images whose background is light")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="connect with TLS, trusting this CA (default: plaintext)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help="mutual TLS: this client certificate (with --tls-key and --tls-ca)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--token", help="bearer token sent with every call (default: the FMNIST_TOKEN "
                                   "environment variable)")
    p.add_argument("--list", action="store_true", help="list the served models and exit")
    return p


def main(args: argparse.Namespace) -> int:
    if _IMPORT_ERROR is not None:
        print(f"error: the gRPC client cannot be imported ({_IMPORT_ERROR}): run `make install`",
              file=sys.stderr)
        return 1
    if not args.list and not args.images:
        print("error: give image files or folders, or --list", file=sys.stderr)
        return 2
    try:
        stub = connect(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, token=args.token or os.environ.get("FMNIST_TOKEN"))
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    try:
        if args.list:
            listing = list_models(stub, args.timeout)
            print(json.dumps(models_dict(listing), indent=2) if args.json else format_models(listing))
            return 0
        images = read_files(collect_files(args.images))
        model = args.model
        if args.variant:
            model = variant_name(model or default_model(list_models(stub, args.timeout)),
                                 args.variant)
        answer = classify(stub, images, model=model, version=args.model_version,
                          top_k=args.top_k, invert=args.invert, timeout=args.timeout)
        answer["server"] = args.server
        print(json.dumps(answer, indent=2) if args.json else format_results(answer))
        return 0
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except grpc.RpcError as e:
        print(f"error: {describe_rpc_error(e, args.server, args.timeout, args.tls_ca is not None)}",
              file=sys.stderr)
        return 1
    finally:
        stub.channel.close()


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
