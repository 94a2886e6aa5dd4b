"""Step 1: what this machine is, and whether the CUDA provider really runs here.

"Really" means: onnxruntime has CUDAExecutionProvider, the NVIDIA driver loads, preload_dlls()
found the CUDA and cuDNN libraries, and a session made the way the server makes them
(execution_providers.py) comes up on CUDA and runs a convolution (cuDNN loads at the first
one) to the CPU's answer. On a CUDA run anything short of that stops the kit with one line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys

from gpu_check.kit import Kit, KitError, ensure_stubs
from gpu_check.record import FAILED, NO_CUDA, PASSED, Check

# What the kit's commands import, by the distribution that brings it (requirements/*.txt).
MODULES = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript",
           "onnxruntime-gpu": "onnxruntime", "numpy": "numpy", "pillow": "PIL",
           "grpcio": "grpc", "grpcio-health-checking": "grpc_health",
           "grpcio-reflection": "grpc_reflection", "protobuf": "google.protobuf",
           "prometheus-client": "prometheus_client", "aiohttp": "aiohttp", "tqdm": "tqdm",
           "matplotlib": "matplotlib"}


def preflight(kit: Kit) -> str | None:
    """Record the machine's facts and checks; None when the run can go on, else the one line
    that says why not."""
    packages, missing = _packages()
    kit.record.info.update({"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpu": _cpu_model(), "packages": packages,
                            "pythonpath": os.environ.get("PYTHONPATH", "").split(os.pathsep)})
    if missing:
        return _stop(kit, "packages", f"missing Python packages: {', '.join(missing)}; bring "
                     "their wheels and pass --wheels DIR (docs/gpu.md lists them)")
    try:
        stubs = ensure_stubs()
    except KitError as e:
        return _stop(kit, "stubs", str(e))
    kit.record.info["stubs"] = stubs
    problem = _stubs_import()
    if problem:
        return _stop(kit, "stubs", problem)
    problem = _load_test_images(kit)
    if problem:
        return _stop(kit, "data", problem)
    kit.record.info["gpu"] = gpu_facts()
    cuda = cuda_provider()
    kit.record.info["cuda_provider"] = cuda
    if kit.plan.cuda and not cuda["active"]:
        return _stop(kit, "CUDA provider active", f"the CUDA provider is not active after "
                     f"onnxruntime.preload_dlls(): {cuda['reason']}")
    kit.record.add(Check("preflight", "CUDA provider active", PASSED if cuda["active"] else NO_CUDA,
                         _cuda_line(cuda), cuda))
    return None


def _stop(kit: Kit, name: str, line: str) -> str:
    kit.record.add(Check("preflight", name, FAILED, line))
    return line


def _packages() -> tuple[dict[str, str | None], list[str]]:
    found, missing = {}, []
    for dist, module in MODULES.items():
        version = None
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            version = _version(dist, module)
        found[dist] = version
        if version is None:
            missing.append(f"{dist} ({module})")
    return found, missing


def _version(dist: str, module: str) -> str:
    for name in (dist, module, dist.replace("-gpu", "")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _stubs_import() -> str | None:
    """The generated stubs refuse a grpcio or protobuf runtime older than the grpcio-tools that
    made them (1.85 here): found now, not when the server starts."""
    try:
        import fmnist.v1.classifier_pb2_grpc  # noqa: F401
        import inference.grpc_service_pb2_grpc  # noqa: F401
    except Exception as e:  # noqa: BLE001 - version checks raise RuntimeError, ImportError, ...
        first = (str(e).strip().splitlines() or [""])[0]
        return (f"the gRPC stubs do not import ({type(e).__name__}: {first}): bring the grpcio "
                "1.85.3 and protobuf 7.36.2 wheels (docs/gpu.md)")
    return None


def _load_test_images(kit: Kit) -> str | None:
    """The test images for the parity checks; the data must be a folder (FASHION_MNIST_DIR or
    Debian's), never a download: GPU hosts here have no network."""
    from trainer import data

    try:
        ds = data.load(download=False)
    except data.DataError as e:
        return (f"{e}: set FASHION_MNIST_DIR to a folder with the four Fashion-MNIST idx(.gz) "
                "files (docs/gpu.md)")
    kit.test_images = ds.test_images[:kit.plan.test_images].numpy()
    kit.record.info["data"] = {"source": ds.source, "train": len(ds.train_labels),
                               "test": len(ds.test_labels)}
    return None


def gpu_facts() -> dict:
    """GPU name, memory, compute capability, driver, and the CUDA/cuDNN torch was built with."""
    import torch

    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "torch_sees_cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
    out["driver"] = _nvidia_smi()
    return out


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def cuda_provider() -> dict:
    """Whether a CUDA session made as the server makes it runs a convolution correctly here."""
    import onnxruntime as ort

    import execution_providers as providers

    out = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
           "active": False, "reason": None, "preload_dlls": None, "options": None}
    if providers.CUDA not in out["available"]:
        out["reason"] = (f"onnxruntime {ort.__version__} has no {providers.CUDA} (available: "
                         f"{', '.join(out['available'])}): install onnxruntime-gpu (--wheels)")
        return out
    if not providers.cuda_driver_present():
        out["reason"] = "no NVIDIA driver: libcuda.so.1 does not load"
        return out
    out["preload_dlls"] = providers.preload_cuda_libraries() or "done"
    session = providers.cuda_session(conv_model())
    if session is None:
        out["reason"] = ("a session asked for CUDA came up on the CPU (preload_dlls: "
                         f"{out['preload_dlls']}; CUDA 13 and cuDNN 9 libraries not found?)")
        return out
    out["options"] = session.get_provider_options().get(providers.CUDA, {})
    diff = conv_difference(session)
    out["conv_max_abs_diff_vs_cpu"] = diff
    out["active"] = diff <= 1e-4
    if not out["active"]:
        out["reason"] = f"a convolution on CUDA differs from the CPU's by {diff:.3g}"
    return out


def _cuda_line(cuda: dict) -> str:
    if not cuda["active"]:
        return cuda["reason"]
    o = cuda["options"]
    return (f"onnxruntime {cuda['onnxruntime']}: a convolution ran on CUDA (max |Δ| vs CPU "
            f"{cuda['conv_max_abs_diff_vs_cpu']:.2g}) with use_tf32={o.get('use_tf32')}, "
            f"cudnn_conv_algo_search={o.get('cudnn_conv_algo_search')}")


def conv_model() -> bytes:
    """x float [1, 3, 32, 32] -> 3x3 Conv to 16 channels -> y: enough to load cuDNN."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(16, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def conv_difference(session) -> float:
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    cpu = ort.InferenceSession(conv_model(), providers=["CPUExecutionProvider"])
    return float(np.abs(session.run(None, {"x": x})[0] - cpu.run(None, {"x": x})[0]).max())
