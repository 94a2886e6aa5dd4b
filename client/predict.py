"""Classify image files with an fmnist-serve server.

    python client/predict.py samples/ankle_boot.png --model resnet18
    python client/predict.py samples/ --top-k 3 --json
    python client/predict.py --list
    python client/predict.py samples/ --server localhost       # port 50051 when none is given

Folders stand for the image files directly inside them (.png .jpg .jpeg .bmp .gif .webp), sorted.
Images go in batches within the limits the server reports (images and bytes per request; a batch
over its pixels per request is split).
An input that cannot be used (missing, unreadable, a folder without images, a file the server
cannot decode) is named on stderr with the reason; the other images are still classified.
Exit status: 0 when every input was classified; 1 when the server or an RPC fails (one line on
stderr); 2 for bad arguments, or when an input could not be used. Needs grpcio and protobuf only
(and the stubs `make install` makes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT, _ROOT / "build" / "gen"):  # works even without the venv's .pth
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))

import model_contract as mc  # noqa: E402 - stdlib only at import, like cli_text
from cli_text import HelpFormatter, format_table  # noqa: E402

if __name__ == "__main__":
    # grpc's C core logs a failed TLS handshake to stderr ("I1201 ... ssl_transport_security.cc")
    # on top of the one line this client prints; a GRPC_VERBOSITY the user sets still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc
    _IMPORT_ERROR: ImportError | None = None
except ImportError as e:  # reported by main() in one line
    _IMPORT_ERROR = e

DEFAULT_PORT = 50051  # the server's default --port
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
INVERSIONS = ("auto", "always", "never")
# gRPC target URIs are passed on as written (grpc's own naming: dns:///host:port, unix:/path, ...)
_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_MESSAGE_HEADROOM = 0.9  # of the server's max message bytes, for protobuf framing and the rest
_PER_IMAGE_OVERHEAD = 16  # bytes of protobuf framing per image, generously
# The server refuses one image of a request as "image <index>: <reason>" (server/errors.py
# InvalidImage, docs/serving.md "fmnist.v1"); any other INVALID_ARGUMENT is about the request as a
# whole.
_REFUSED_IMAGE = re.compile(r"image (\d+): (.+)", re.DOTALL)


class ClientError(Exception):
    """A problem to report in one line (exit_code 1: server/RPC, 2: arguments/files)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ImageFile:
    path: Path
    data: bytes


@dataclass(frozen=True)
class Unusable:
    """An input left out, and why: the other inputs are still classified (exit status 2)."""

    path: Path
    reason: str

    def as_dict(self) -> dict:
        return {"file": str(self.path), "error": self.reason}


# --- files -----------------------------------------------------------------------------------

def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Unusable]]:
    """Files as given; folders -> their image files (not recursive), sorted by name. A missing
    path, a folder that cannot be listed or holds no image files is unusable."""
    files, unusable = [], []
    for path in map(Path, paths):
        try:
            if path.is_dir():
                inside = _folder_images(path)
                files += inside
                if not inside:
                    unusable.append(Unusable(path, "no image files "
                                             f"({' '.join(IMAGE_SUFFIXES)}) in this folder"))
            elif path.exists():
                files.append(path)
            else:
                unusable.append(Unusable(path, "no such file or folder"))
        except OSError as e:
            unusable.append(Unusable(path, f"cannot read it ({e.strerror or e})"))
    return files, unusable


def _folder_images(folder: Path) -> list[Path]:
    """Regular files with an image suffix, and links to such names whose target has gone (they
    are reported when read, as a file deleted between listing and reading is)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and (p.is_file() or (p.is_symlink() and not p.exists())))


def read_images(files: Iterable[Path]) -> tuple[list[ImageFile], list[Unusable]]:
    images, unusable = [], []
    for path in files:
        try:
            images.append(ImageFile(path, path.read_bytes()))
        except OSError as e:
            reason = (f"cannot read it ({e.strerror or e})" if not isinstance(e, FileNotFoundError)
                      else "no such file (gone since its folder was listed?)")
            unusable.append(Unusable(path, reason))
    return images, unusable


def load_images(paths: Iterable[str | Path]) -> tuple[list[ImageFile], list[Unusable]]:
    files, unusable = find_images(paths)
    images, unreadable = read_images(files)
    return images, unusable + unreadable


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """find_images for a caller that needs every input (scripts/demo_classify.py): the first
    unusable one is a ClientError (exit 2)."""
    return _every(*find_images(paths))


def read_files(files: Iterable[Path]) -> list[ImageFile]:
    """read_images, with the first unreadable file a ClientError (exit 2)."""
    return _every(*read_images(files))


def _every(items: list, unusable: list[Unusable]) -> list:
    if unusable:
        raise ClientError(f"{unusable[0].path}: {unusable[0].reason}", exit_code=2)
    return items


def _message_budget(max_bytes: int) -> int:
    return int(max_bytes * _MESSAGE_HEADROOM) - 1024


def fit_messages(images: list[ImageFile], max_bytes: int) -> tuple[list[ImageFile], list[Unusable]]:
    """The images that fit in one message of at most `max_bytes`, and those that do not."""
    budget = _message_budget(max_bytes)
    fitting = [i for i in images if len(i.data) + _PER_IMAGE_OVERHEAD <= budget]
    too_large = [Unusable(i.path, f"{len(i.data):,} bytes is over what the server accepts in one "
                          f"message ({max_bytes:,} bytes)")
                 for i in images if len(i.data) + _PER_IMAGE_OVERHEAD > budget]
    return fitting, too_large


def batches(images: list[ImageFile], max_images: int, max_bytes: int) -> Iterator[list[ImageFile]]:
    """Consecutive groups of at most `max_images` images and about `max_bytes` per message (each
    image fits alone: fit_messages)."""
    budget = _message_budget(max_bytes)
    batch: list[ImageFile] = []
    size = 0
    for image in images:
        cost = len(image.data) + _PER_IMAGE_OVERHEAD
        if batch and (len(batch) >= max_images or size + cost > budget):
            yield batch
            batch, size = [], 0
        batch.append(image)
        size += cost
    if batch:
        yield batch


# --- RPCs ------------------------------------------------------------------------------------

def with_default_port(server: str) -> str:
    """--server as grpc is to dial it: DEFAULT_PORT when the address names none ("localhost" ->
    "localhost:50051", "[::1]" and "::1" -> "[::1]:50051"; grpc itself would dial 443). gRPC
    target URIs (dns:, unix:, ipv4:, ipv6:, vsock:) are passed on as written."""
    if server.startswith(_TARGET_SCHEMES):
        return server
    if server.startswith("["):  # "[::1]" or "[::1]:50051"
        host, bracket, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None if rest else ""
        if not bracket or port is None:
            raise ClientError(f"--server {server}: write an IPv6 address as [::1] or "
                              f"[::1]:{DEFAULT_PORT}", exit_code=2)
    elif server.count(":") > 1:  # a bare IPv6 address: "::1"
        host, port = server, ""
    else:
        host, _, port = server.partition(":")
    if not host:
        raise ClientError(f"--server {server}: no host in it (e.g. {DEFAULT_SERVER})", exit_code=2)
    port = port or str(DEFAULT_PORT)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ClientError(f"--server {server}: {port!r} is not a port number (1-65535)",
                          exit_code=2)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def choose_model(listing: pb.ListModelsResponse, model: str | None, variant: str | None) -> str:
    """--model and --variant -> the name to ask for ("resnet18" + "int8" -> "resnet18:int8",
    docs/DESIGN.md "Precision variants"); no --model: default_model's architecture."""
    if model is None:
        model = default_model(listing)
        if variant:
            model = mc.split_name(model)[0]
    arch, named = mc.split_name(model)
    if variant and named and named != variant:
        raise ClientError(f"--model {model} is the {named} variant but --variant asks for "
                          f"{variant}: give one of them", exit_code=2)
    return mc.served_name(arch, variant or named)


def classify(stub, images: list[ImageFile], *, model: str | None = None, version: int = 0,
             top_k: int = 1, invert: str = "auto", timeout: float = 30.0,
             listing: pb.ListModelsResponse | None = None) -> dict:
    """Classify `images` in batches within the server's limits; returns the dict `--json` prints.
    An image the server refuses, or too large for one message, is left out and listed under
    "errors" with the reason; the others are classified."""
    listing = listing or list_models(stub, timeout)
    limits = listing.limits
    max_bytes = limits.max_message_bytes or 4 * 1024 * 1024
    inversion = {"auto": pb.INVERSION_AUTO, "always": pb.INVERSION_ALWAYS,
                 "never": pb.INVERSION_NEVER}[invert]
    template = pb.ClassifyRequest(model=model or default_model(listing), version=version,
                                  top_k=top_k, inversion=inversion)
    images, unusable = fit_messages(images, max_bytes)
    results, answered = [], None
    for batch in batches(images, limits.max_images_per_request or 64, max_bytes):
        answers, model_version, refused = _classify_batch(stub, template, batch, timeout)
        unusable += refused
        answered = answered or model_version
        results += [_result(image, classification) for image, classification in answers]
    model, version = answered or (template.model, version or None)
    return {"model": model, "version": version, "results": results,
            "errors": [u.as_dict() for u in unusable]}


def _classify_batch(stub, template: pb.ClassifyRequest, batch: list[ImageFile], timeout: float):
    """([(image, classification)], (model, version) or None, [images the server refused]).

    An image the server refuses ("image 3: not a PNG ...") is left out and the rest sent again,
    so one bad file costs one more call. A request refused as a whole (its images add up to more
    pixels than the server takes at once, which only decoding would tell) is sent as two halves;
    a request of one image refused as a whole is at fault itself, and that error is raised."""
    pending, refused = list(batch), []
    while pending:
        request = pb.ClassifyRequest()
        request.CopyFrom(template)
        request.images.extend(pb.Image(encoded=image.data) for image in pending)
        try:
            response = stub.Classify(request, timeout=timeout)
            return (list(zip(pending, response.classifications)),
                    (response.model, response.version), refused)
        except grpc.RpcError as e:
            index, reason = _refused_image(e, len(pending))
            if index is not None:
                refused.append(Unusable(pending.pop(index).path, reason))
            elif e.code() != grpc.StatusCode.INVALID_ARGUMENT or len(pending) == 1:
                raise
            else:
                half = len(pending) // 2
                (answers, first, left_out), (more, second, also_left_out) = (
                    _classify_batch(stub, template, part, timeout)
                    for part in (pending[:half], pending[half:]))
                return answers + more, first or second, refused + left_out + also_left_out
    return [], None, refused


def _refused_image(error: grpc.RpcError, count: int) -> tuple[int | None, str]:
    """(index, reason) when the server refused one image of a request of `count`; else
    (None, "")."""
    match = _REFUSED_IMAGE.fullmatch(error.details() or "")
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not match or int(match[1]) >= count:
        return None, ""
    return int(match[1]), match[2]


def _result(image: ImageFile, classification) -> dict:
    return {"file": str(image.path), "predictions": [
        {"rank": rank, "class_id": p.class_id, "label": p.label,
         "probability": round(p.probability, 6)}
        for rank, p in enumerate(classification.predictions, 1)]}


def describe_rpc_error(error: grpc.RpcError, server: str, timeout: float,
                       tls: bool = False) -> str:
    """One line that says what went wrong and what to do about it."""
    code, details = error.code(), error.details() or ""
    text = details.lower()
    failure = _tls_failure(details, tls)
    if code == grpc.StatusCode.UNAVAILABLE and failure:
        return f"TLS with {server} failed: {failure}"
    if code == grpc.StatusCode.UNAVAILABLE and not tls and "socket closed" in text:
        return (f"{server} closed the connection ({details}); if it serves TLS, give --tls-ca "
                "(and --tls-cert/--tls-key for mutual TLS)")
    if code == grpc.StatusCode.UNAVAILABLE and "connection refused" in text:
        return (f"nothing listens at {server} (connection refused): is the fmnist server running "
                f"(make serve), and on this port (it listens on {DEFAULT_PORT} unless told "
                "otherwise)?")
    if code == grpc.StatusCode.UNAVAILABLE and "http/2" in text:
        return (f"{server} does not speak gRPC ({details}): wrong port? (the Prometheus metrics "
                f"port answers HTTP/1; the fmnist server's gRPC port is {DEFAULT_PORT} unless "
                "told otherwise)")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"{server} answers gRPC but not fmnist.v1.Classifier ({details}): wrong port, or "
                "another service?")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"{server} refused the call (UNAUTHENTICATED: {details}); give a token with "
                "--token or the FMNIST_TOKEN environment variable")
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the fmnist server at {server} ({details}); is it running (make serve)?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"no answer from {server} within --timeout {timeout:g}s: give it longer "
                "(--timeout), or check that the server is not overloaded")
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

_PREDICTION_COLUMNS = [("label", "label", ""), ("class_id", "class", "d"),
                       ("probability", "probability", ".4f")]
_MODEL_COLUMNS = [("name", "model", ""), ("version", "version", "d"), ("variant", "variant", ""),
                  ("test_accuracy", "accuracy", ".4f"), ("test_images", "on images", ""),
                  ("input_side", "input", "d"), ("provider", "provider", ""),
                  ("probe", "probe |Δ|", ""), ("fp32_agreement", "agree fp32", ".2%"),
                  ("speedup", "vs fp32 b32", "")]


def format_results(answer: dict) -> str:
    """Top-1: one line per image, `<file>: <label> (<probability>)  [<model> v<version>]`, the
    labels aligned. Top-k: per image a `<file>  [<model> v<version>]` line over a table of its
    k classes, best first."""
    tag = f"[{answer['model']} v{answer['version']}]"
    results = answer["results"]
    if all(len(r["predictions"]) == 1 for r in results):
        width = max(len(r["file"]) for r in results) + 1
        return "\n".join(f"{r['file'] + ':':<{width}} {r['predictions'][0]['label']} "
                         f"({r['predictions'][0]['probability']:.1%})  {tag}" for r in results)
    return "\n".join(f"{r['file']}  {tag}\n"
                     + textwrap.indent(format_table(r["predictions"], _PREDICTION_COLUMNS), "  ")
                     for r in results)


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
    """The --list table (one row per served model version), then one line per refused version."""
    listed = models_dict(listing)
    refused = [f"not served: {r['name']} v{r['version']}: {r['reason']}" for r in listed["refused"]]
    if not listed["models"]:
        return "\n".join(["the server serves no models", *refused])
    rows = [{**m, "test_images": m["test_images"] or "?",
             "probe": ("unverified" if m["probe_max_abs_diff"] is None
                       else f"{m['probe_max_abs_diff']:.1e}"),
             "speedup": _speedup(m["speedup_vs_fp32"])} for m in listed["models"]]
    return "\n".join([format_table(rows, _MODEL_COLUMNS), *refused])


def _speedup(speedup: float | None) -> str | None:
    """A variant's batch-32 speed over fp32 as the server measured it; says when it is slower."""
    if speedup is None:
        return None
    return f"{speedup:.2f}x" + (" (slower here)" if speedup < 1 else "")


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
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--model", help="model name (default: the served model with the best test accuracy)")
    p.add_argument("--variant", choices=mc.VARIANTS,
                   help="a precision variant of --model, served as MODEL:VARIANT "
                        "(default: the fp32 model)")
    p.add_argument("--model-version", type=_version, default=0, metavar="N",
                   help="0: the newest the server has")
    p.add_argument("--top-k", type=int, default=1, choices=range(1, 11), metavar="1..10",
                   help="how many classes to show per image, best first")
    p.add_argument("--server", default=DEFAULT_SERVER,
                   help=f"host[:port], port {DEFAULT_PORT} when left out; IPv6 as [::1] or "
                        f"[::1]:{DEFAULT_PORT}")
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds per RPC")
    p.add_argument("--invert", choices=INVERSIONS, default="auto",
                   help="auto: invert images whose background is light")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of tables (unusable inputs under \"errors\")")
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
        return _fail(f"the gRPC client cannot be imported ({_IMPORT_ERROR}): run `make install`", 1)
    if not args.list and not args.images:
        return _fail("give image files or folders, or --list", 2)
    server = args.server
    try:
        server = with_default_port(args.server)
        stub = connect(server, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       token=args.token or os.environ.get("FMNIST_TOKEN"))
        try:
            return _list(stub, args) if args.list else _predict(stub, args, server)
        finally:
            stub.channel.close()
    except ClientError as e:
        return _fail(str(e), e.exit_code)
    except grpc.RpcError as e:
        return _fail(describe_rpc_error(e, server, args.timeout, args.tls_ca is not None), 1)


def _fail(message: str, exit_code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def _list(stub, args: argparse.Namespace) -> int:
    listing = list_models(stub, args.timeout)
    print(json.dumps(models_dict(listing), indent=2) if args.json else format_models(listing))
    return 0


def _predict(stub, args: argparse.Namespace, server: str) -> int:
    """Classify what can be used; name each input that cannot on stderr (then exit 2)."""
    images, unusable = load_images(args.images)
    answer: dict = {"results": [], "errors": []}
    if images:
        listing = list_models(stub, args.timeout)
        answer = classify(stub, images, model=choose_model(listing, args.model, args.variant),
                          version=args.model_version, top_k=args.top_k, invert=args.invert,
                          timeout=args.timeout, listing=listing)
    answer["errors"] = [u.as_dict() for u in unusable] + answer["errors"]
    answer["server"] = server
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["results"]:
        print(format_results(answer))
    for error in answer["errors"]:
        print(f"error: {error['file']}: {error['error']}", file=sys.stderr)
    return 2 if answer["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
