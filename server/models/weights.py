"""Model weights the --workers processes share instead of copying.

Every worker loads every model, and an onnxruntime session keeps its own copy of the weights: the
file's, then the copies its graph optimizations make (convolution weights reordered for the CPU's
vector width) and, for matrix products, packed copies. N workers held N copies. Here a CPU
session loads its model from a per-host cache of onnxruntime-optimized copies instead: the
optimizations are done once and saved with the weights in an external data file, which
onnxruntime maps into memory read-only when it loads the copy (graph optimizations off: they are
in it already; weight pre-packing off for large models: packed copies would be private again). Every process that
serves the model maps the same file, so its pages are in memory once, shared, whatever the number
of workers (`make bench-density` measures it).

    path = prepared(Path("models/resnet18/3/model.onnx"), Path("/var/cache/fmnist-serve"))

The cache is keyed by the file's content, the onnxruntime version and the CPU's ISA flags (the
optimized graph holds layouts for this CPU's vector width); an entry is written under a hidden
name and renamed into place, so workers starting together never see half of one. The server
checks a prepared copy as it checks any file: its probe runs on the session that serves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import onnxruntime as ort

from server.errors import ModelLoadError

log = logging.getLogger(__name__)

MODEL, DATA = "model.onnx", "model.onnx.data"
UNUSED_DAYS = 7  # entries not used for this long are removed as others are prepared


PACK_LIMIT = 64 * 1024 * 1024  # bytes of weights above which matrix weights are not pre-packed


def session_options(options: ort.SessionOptions, model: Path) -> ort.SessionOptions:
    """What loading the prepared copy `model` needs: its optimizations are done already. Weight
    pre-packing (private copies of matrix-product weights, in the layout the kernels read) stays
    on for small models, whose speed it is (lenet_bn at batch 32: 15% slower without it, on an
    Intel Xeon with AVX-512), and is off for large ones, whose fully connected weights are most of
    their memory (alexnet, vgg11: 190 and 170 MB; two processes of alexnet held 518 MiB with
    packing and 358 without, at the same speed)."""
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if (model.parent / DATA).stat().st_size > PACK_LIMIT:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def prepared(model: Path, cache: Path) -> Path:
    """The cached optimized copy of `model` (made now when there is none); ModelLoadError when
    onnxruntime cannot optimize it, OSError when the cache cannot be written."""
    entry = cache / _key(model)
    if (entry / MODEL).is_file():
        os.utime(entry)  # used: kept by the pruning
        return entry / MODEL
    cache.mkdir(parents=True, exist_ok=True)
    hidden = cache / f".{entry.name}.{os.getpid()}.tmp"
    shutil.rmtree(hidden, ignore_errors=True)
    hidden.mkdir()
    try:
        started = time.perf_counter()
        _optimize(model, hidden / MODEL)
        try:
            os.rename(hidden, entry)
        except OSError:  # another process got there first: its copy is the same
            pass
        log.info("prepared shared weights for %s in %.1fs: %s", model, time.perf_counter() - started,
                 entry)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
    _prune(cache)
    return entry / MODEL


def _optimize(model: Path, out: Path) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warning that the copy suits this CPU only: known
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     DATA)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"onnxruntime cannot load it: {type(e).__name__}: "
                             f"{first_line}") from None


def _key(model: Path) -> str:
    """The file's content, this onnxruntime and this CPU's ISA, in one name."""
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    digest.update(ort.__version__.encode())
    digest.update(_isa().encode())
    return digest.hexdigest()[:32]


def _isa() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))),
                 "")
    return " ".join(sorted(flags.partition(":")[2].split()))


def _prune(cache: Path) -> None:
    """Remove entries no process used for UNUSED_DAYS (old versions' copies)."""
    oldest = time.time() - UNUSED_DAYS * 86400
    for entry in cache.iterdir():
        try:
            if entry.is_dir() and not entry.name.startswith(".") and entry.stat().st_mtime < oldest:
                shutil.rmtree(entry)
        except OSError:
            continue
