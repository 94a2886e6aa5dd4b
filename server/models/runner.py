"""The one place a model's requests run: a runner owns one onnxruntime session.

Everything above talks to the `Runner` interface only; server/batching/ wraps each runner in a
dynamic batcher (queue requests, run them as one batch, split the results back).

    runner = OnnxRunner(path, providers=["CPUExecutionProvider"])
    out = runner.run(np.zeros((4, 1, 28, 28), np.uint8))   # out.probabilities: float32 [4, 10]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from model_contract import INPUT, NUM_CLASSES, OUTPUTS, SIDE
from execution_providers import CPU, CUDA, CudaOptions
from server.errors import ModelLoadError, Unavailable
from server.models import weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutput:
    probabilities: np.ndarray  # float32 [N, 10]
    logits: np.ndarray  # float32 [N, 10]


@runtime_checkable
class Runner(Protocol):
    """What the core needs from a model runtime."""

    provider: str  # the execution provider actually active, e.g. "CPUExecutionProvider"
    metadata: dict[str, str]  # the model file's metadata_props
    settings: str  # how the runtime was set up, for the log ("intra_op_threads=2 spinning=off",
                   # and on CUDA its options: "use_tf32=0 cudnn_conv_algo_search=EXHAUSTIVE ...")

    def run(self, images: np.ndarray) -> RunOutput:
        """uint8 [N, 1, 28, 28] -> probabilities and logits, float32 [N, 10]. Thread-safe."""
        ...

    def warmup(self, batch_size: int = 1) -> None:
        """One run on a zero batch of `batch_size`, so the first request of that shape does not
        pay for lazy initialisation (allocations; on CUDA, cuDNN's algorithm search)."""
        ...

    def close(self) -> None:
        ...


class OnnxRunner:
    """Owns one `onnxruntime.InferenceSession` for one model file. `providers` as onnxruntime takes
    them: names, or (name, options) pairs (ProviderPolicy.requested() gives CUDA's options)."""

    def __init__(self, path: str | Path, providers: list, intra_op_threads: int = 0,
                 spinning: bool = False, weights_cache: Path | None = None):
        """`weights_cache`: share the weights with the other processes serving this model
        through that folder (server/models/weights.py; CPU sessions only)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0: onnxruntime's default (all cores)
        # Spinning threads wait for the next run by burning a core; in a server the event loop
        # and the decoders need that core between runs (bench.serve measures both settings).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3  # errors only: onnxruntime's warnings are not ours to print
        source, shared = _source(Path(path), providers, weights_cache, options)
        try:
            self._session = ort.InferenceSession(str(source), sess_options=options,
                                                 providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise ModelLoadError(f"onnxruntime cannot load it: {type(e).__name__}: "
                                 f"{first_line}") from None
        _check_signature(self._session)
        self.path = Path(path)
        self.provider = self._session.get_providers()[0]
        self.settings = (f"intra_op_threads={intra_op_threads or 'default'} "
                         f"spinning={'on' if spinning else 'off'} "
                         f"shared_weights={'on' if shared else 'off'}"
                         + _cuda_settings(self._session, self.provider))
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, images: np.ndarray) -> RunOutput:
        session = self._session
        if session is None:
            raise Unavailable(f"{self.path} is closed: the server is shutting down")
        logits, probabilities = session.run(list(OUTPUTS), {INPUT: images})
        return RunOutput(probabilities=probabilities, logits=logits)

    def warmup(self, batch_size: int = 1) -> None:
        self.run(np.zeros((batch_size, 1, SIDE, SIDE), np.uint8))

    def close(self) -> None:
        self._session = None


def _source(path: Path, providers: list, cache: Path | None,
            options: ort.SessionOptions) -> tuple[Path, bool]:
    """The file to load and whether its weights are shared: the cached optimized copy for a CPU
    session with a cache (options set to load it); else the file itself, as when the cache
    cannot be written (one warning a folder)."""
    if cache is None or providers != [CPU]:
        return path, False
    try:
        source = weights.prepared(path, cache)
    except OSError as e:
        if cache not in _UNWRITABLE:
            _UNWRITABLE.add(cache)
            log.warning("cannot share weights through %s (%s): every process loads its own copy",
                        cache, e.strerror or e)
        return path, False
    weights.session_options(options, source)
    return source, True


_UNWRITABLE: set[Path] = set()


def _cuda_settings(session: ort.InferenceSession, provider: str) -> str:
    """The CUDA options onnxruntime reports for this session (what it made of the request, not
    the request itself), for the loaded-model log line; "" off CUDA."""
    if provider != CUDA:
        return ""
    active = session.get_provider_options().get(CUDA, {})
    return "".join(f" {key}={active.get(key, '?')}" for key in CudaOptions().provider_options())


def _check_signature(session: ort.InferenceSession) -> None:
    """The model contract: input `image` uint8 [batch, 1, 28, 28]; outputs logits and
    probabilities [batch, 10]."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    image = inputs.get(INPUT)
    if image is None or len(inputs) != 1:
        raise ModelLoadError(f"expected one input named {INPUT!r}, found {sorted(inputs)}")
    if image.type != "tensor(uint8)" or list(image.shape[1:]) != [1, SIDE, SIDE]:
        raise ModelLoadError(f"input {INPUT!r} must be uint8 [batch, 1, {SIDE}, {SIDE}], "
                             f"found {image.type} {image.shape}")
    for name in OUTPUTS:
        out = outputs.get(name)
        if out is None:
            raise ModelLoadError(f"missing output {name!r} (outputs: {sorted(outputs)})")
        if len(out.shape) != 2 or out.shape[1] != NUM_CLASSES:
            raise ModelLoadError(f"output {name!r} must be [batch, {NUM_CLASSES}], found {out.shape}")
