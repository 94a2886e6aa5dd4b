"""scripts/gpu_check.py (`make gpu-check`), rehearsed on this CPU as `make test`'s share of it.

The real script runs as a subprocess on lenet_bn with the steps that fit in well under a minute
(train, export, parity, serve, bench, tf32); --resume and torchrun are left to the full
rehearsal, `make gpu-check DEVICE=cpu` (and tests/trainer proves both). Its wheels come from a
folder holding one wheel split into two parts, as the onnxruntime-gpu wheel travels. There is no
GPU here: every check only CUDA can decide must say "skipped: no CUDA", and every figure the
steps measured on the CPU must be in the JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = str(REPO / "scripts" / "gpu_check.py")
WHEEL = "gpu_check_probe-1.0-py3-none-any.whl"
NO_CUDA = "skipped: no CUDA"


def make_wheel(folder: Path) -> bytes:
    """A tiny pure-Python wheel (module gpu_check_probe) with a correct RECORD."""
    info = "gpu_check_probe-1.0.dist-info"
    files = {"gpu_check_probe/__init__.py": b'WHERE = "a wheel"\n',
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    data = path.read_bytes()
    path.unlink()
    return data


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def split_into(folder: Path, data: bytes, parts: int) -> None:
    """`split -n <parts> -d`: WHEEL.00, WHEEL.01, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    for i in range(parts):
        (folder / f"{WHEEL}.{i:02d}").write_bytes(data[i * size:(i + 1) * size])


def gpu_check(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASHION_MNIST_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env.pop("GPU_CHECK_OUT", None)
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, fmnist_dir):
    root = tmp_path_factory.mktemp("gpu-check")
    split_into(root / "wheels", make_wheel(root), parts=2)
    done = gpu_check("--device", "cpu", "--models", "lenet_bn", "--steps",
                     "train,export,parity,serve,bench,tf32", "--out", str(root / "out"),
                     "--work", str(root / "work"), "--wheels", str(root / "wheels"),
                     data_dir=fmnist_dir)
    report = json.loads((root / "out" / "gpu-check.json").read_text())
    return done, report, root


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_the_rehearsal_passes_and_names_what_only_cuda_can_show(rehearsal):
    done, report, _ = rehearsal
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = by_name(report)
    assert report["failed"] == [] and report["kit"]["device"] == "cpu"
    for name in ("train lenet_bn", "export lenet_bn",
                 "server --device cpu: every model and variant loaded"):
        assert checks[name]["status"] == "passed", checks[name]
    for name in ("CUDA provider active", "fp16 lenet_bn", "CUDA parity lenet_bn (TF32 off)",
                 "TF32 on lenet_bn", "probe and warm-up on CUDA: lenet_bn", "bench lenet_bn",
                 "bench lenet_bn:fp16", "server --cuda-tf32"):
        assert checks[name]["status"] == NO_CUDA, checks[name]
    assert checks["resume"]["status"] == checks["torchrun"]["status"] == (
        "skipped: not asked for (--steps)")
    assert checks["int8 variants"]["status"] == "skipped: CPU-only"
    assert "no CUDA provider on this machine" in checks["fp16 lenet_bn"]["detail"]
    markdown = (rehearsal[2] / "out" / "gpu-check.md").read_text()
    assert "nothing here ran on a GPU" in markdown
    assert "| fp16 lenet_bn | skipped: no CUDA |" in markdown


def test_each_step_keeps_the_figures_it_measured(rehearsal):
    _, report, _ = rehearsal
    checks = by_name(report)
    train = checks["train lenet_bn"]["figures"]
    assert train["examples_per_s"] > 0 and train["steps"] >= 1 and train["device"] == "cpu"
    assert train["d2l_gpu_examples_per_s"] is None  # d2l prints none for LeNet
    parity = checks["CUDA parity lenet_bn (TF32 off)"]["figures"]
    assert parity["provider"] == "CPUExecutionProvider" and parity["images"] == 16
    assert parity["max_abs_diff_probabilities"] <= parity["tolerance"] == 1e-3
    assert checks["TF32 on lenet_bn"]["figures"]["tolerance"] == 1e-2
    served = checks["probe and warm-up on CUDA: lenet_bn"]["figures"]
    assert served["provider"] == "CPUExecutionProvider" and served["warm_up"] == "batch 1"
    assert served["probe_max_abs_diff"] <= served["tolerance"] == 1e-3
    cells = checks["bench lenet_bn"]["figures"]["cells"]
    assert set(cells) == {"in-process b1", "io binding b1", "in-process b8", "io binding b8",
                          "server 1 caller(s)", "server 8 caller(s)"}
    assert all(c["images_per_s"] > 0 and c["p99_ms"] >= c["p50_ms"] for c in cells.values())
    assert set(report["kit"]["step_seconds"]) == {"train", "export", "parity", "serve", "bench",
                                                  "tf32"}


def test_wheels_split_into_parts_are_joined_installed_and_first_on_the_path(rehearsal):
    _, report, root = rehearsal
    assert report["preflight"]["wheels"] == WHEEL
    assert (root / "work" / "site" / "gpu_check_probe" / "__init__.py").is_file()
    assert report["preflight"]["pythonpath"][0] == str(root / "work" / "site")


def test_a_wheel_with_a_part_missing_stops_before_any_work(tmp_path, fmnist_dir):
    split_into(tmp_path / "wheels", make_wheel(tmp_path), parts=2)
    (tmp_path / "wheels" / f"{WHEEL}.01").unlink()
    done = gpu_check("--device", "cpu", "--wheels", str(tmp_path / "wheels"), "--out",
                     str(tmp_path / "out"), data_dir=fmnist_dir, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"gpu-check: stopped: {WHEEL} is not a whole wheel (joined from 1 parts: {WHEEL}.00): "
        "File is not a zip file")
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [c["status"] for c in report["checks"]] == ["failed"]


def test_cuda_without_a_usable_gpu_stops_in_one_line(tmp_path, fmnist_dir):
    """No NVIDIA driver here: the real check (--device cuda) stops at the preflight."""
    done = gpu_check("--device", "cuda", "--out", str(tmp_path), data_dir=fmnist_dir,
                     timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu-check: stopped: the CUDA provider is not active after "
                           "onnxruntime.preload_dlls(): "), done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [c["step"] for c in report["checks"]] == ["preflight"]
    assert report["preflight"]["cuda_provider"]["active"] is False


def test_make_gpu_check_runs_the_script_with_its_folder_and_device():
    done = subprocess.run(["make", "-n", "gpu-check", "DEVICE=cpu", "WHEELS=/w"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    command = " ".join(done.stdout.replace("\\\n", " ").split())
    assert "scripts/gpu_check.py --device cpu --out artifacts/gpu-check/ --wheels /w" in command


def test_unknown_steps_are_refused():
    done = subprocess.run([sys.executable, SCRIPT, "--steps", "train,warp"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step(s) warp" in done.stderr
