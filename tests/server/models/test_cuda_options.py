"""The CUDA provider options the server asks onnxruntime for (execution_providers.py, server/models/providers.py): TF32 off
unless --cuda-tf32, and the probe tolerance each setting is held to; --cuda-tf32 through
`python -m server` itself.

MOCK: this machine has no GPU. `onnxruntime.InferenceSession` is replaced, for the tests marked
_mock, by a recorder that keeps the providers and options the server passed and hands back a real
CPU session on the same file whose get_providers() says CUDA. What these tests prove is what the
server asks for; what onnxruntime makes of it on a GPU (`get_provider_options()`), and the probe
differences TF32 really gives, `make gpu-check` measures there (docs/gpu.md).
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

import model_contract as mc
from server.models.loading import Loader
from execution_providers import CPU, CUDA, TF32_PROBE_TOLERANCE, CudaOptions
from server.models.providers import ProviderPolicy
from harness.process import ServerProcess

REAL_SESSION = ort.InferenceSession
FULL_FP32 = {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
             "arena_extend_strategy": "kSameAsRequested"}


@pytest.fixture
def asked(monkeypatch) -> list:
    """The `providers` argument of every InferenceSession the server creates (MOCK, see above)."""
    record: list = []

    class CudaClaimingSession:
        def __init__(self, path, sess_options=None, providers=None):
            record.append(providers)
            self._options = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
            self._real = REAL_SESSION(path, sess_options, providers=[CPU])

        def get_providers(self):
            return [CUDA, CPU]

        def get_provider_options(self):
            return {CUDA: self._options, CPU: {}}

        def __getattr__(self, name):
            return getattr(self._real, name)

    monkeypatch.setattr(ort, "InferenceSession", CudaClaimingSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda: None)
    return record


def test_cuda_sessions_run_full_fp32_by_default_mock(models_dir, asked):
    """onnxruntime's own default is use_tf32=1: fp32 convolutions on TF32 tensor cores, whose
    10-bit mantissa the fp32 probe tolerance (1e-3) was never meant for. Red before the server
    set it: the session was asked for bare "CUDAExecutionProvider"."""
    loaded = Loader(ProviderPolicy("cuda", driver_present=lambda: True)).load_all(models_dir)
    assert len(loaded) == 2 and len(asked) == 2
    assert all(providers == [(CUDA, FULL_FP32), CPU] for providers in asked)
    for model in loaded:
        assert model.provider == CUDA
        assert model.spec.probe_tolerance == mc.PROBE_TOLERANCE
        assert "use_tf32=0 cudnn_conv_algo_search=EXHAUSTIVE" in model.runner.settings


def test_cuda_tf32_is_asked_for_and_held_to_its_own_tolerance_mock(models_dir, asked):
    policy = ProviderPolicy("cuda", driver_present=lambda: True, cuda=CudaOptions(tf32=True))
    loaded = Loader(policy).load_all(models_dir)
    assert all(providers == [(CUDA, {**FULL_FP32, "use_tf32": "1"}), CPU] for providers in asked)
    assert [m.spec.probe_tolerance for m in loaded] == [TF32_PROBE_TOLERANCE] * 2
    assert all("use_tf32=1" in m.runner.settings for m in loaded)


def test_tf32_widens_the_fp32_tolerance_on_cuda_only():
    fp32 = mc.ModelMetadata(arch="m", labels=("x",) * 10, input_side=28, test_accuracy=0.5,
                            source_sha256="0" * 64, exported_at="t", torch_version="t")
    int8 = mc.ModelMetadata(**{**fp32.__dict__, "variant": "int8"})
    tf32 = ProviderPolicy("auto", driver_present=lambda: True, cuda=CudaOptions(tf32=True))
    plain = ProviderPolicy("auto", driver_present=lambda: True)
    assert tf32.probe_tolerance(fp32, CUDA) == TF32_PROBE_TOLERANCE > mc.PROBE_TOLERANCE
    assert tf32.probe_tolerance(fp32, CPU) == mc.PROBE_TOLERANCE  # the CPU has no TF32
    assert tf32.probe_tolerance(int8, CUDA) == mc.VARIANT_PROBE_TOLERANCE["int8"]  # already wider
    assert plain.probe_tolerance(fp32, CUDA) == mc.PROBE_TOLERANCE


@pytest.mark.parametrize("flags,said", [
    ((), "use_tf32=0 cudnn_conv_algo_search=EXHAUSTIVE arena_extend_strategy=kSameAsRequested "
         "(TF32 off: fp32 probes on CUDA are held to max |Δ| 0.001"),
    (("--cuda-tf32",), "use_tf32=1 cudnn_conv_algo_search=EXHAUSTIVE "
                       "arena_extend_strategy=kSameAsRequested (TF32 on, --cuda-tf32: fp32 probes "
                       "on CUDA are held to max |Δ| 0.01")])
def test_the_server_logs_the_cuda_options_and_the_tolerance_they_take(models_dir, flags, said):
    """`python -m server --device auto [--cuda-tf32]`: the start-up log says how CUDA sessions
    are set up and which probe tolerance that means, before it finds out whether CUDA comes up
    (here it does not, and the models are served on the CPU)."""
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "auto",
                       *flags) as server:
        server.wait_for_port()
        assert server.count(f"CUDA provider options: {said}") == 1, server.log


def test_cuda_tf32_with_device_cpu_is_refused(models_dir):
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                       "--cuda-tf32") as server:
        assert server.wait(60) == 1
    assert "cannot start: --cuda-tf32 sets the CUDA provider's math" in server.log, server.log
