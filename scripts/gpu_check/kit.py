"""The run's plan (what each device gets), its wall clock, and how it starts the real commands.

Every step runs what people run: `python -m trainer`, `python -m exporter`, `python -m server` as
subprocesses of this interpreter, with the repository, the generated stubs and (with --wheels)
the folder the wheels went into on their PYTHONPATH. Each subprocess gets what is left of the
run's wall-clock budget at most, so the whole run ends within it; a step that no longer fits is
"skipped: out of time".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gpu_check.record import FAILED, NO_TIME, Check, Record

REPO = Path(__file__).resolve().parent.parent.parent
GEN = REPO / "build" / "gen"
BENCH_MODELS = ("lenet_bn", "resnet18")


@dataclass(frozen=True)
class Plan:
    """What one device's run does; `cuda` the real check (8 minutes on one GPU), `cpu` the
    rehearsal of the same steps with tiny budgets (5 minutes on 2 cores)."""

    device: str               # "cuda" | "cpu"
    minutes: float            # the whole run's wall-clock budget
    precision: str            # trainer --precision
    train_seconds: float      # trainer --time-budget per architecture
    train_batch: int | None   # trainer --batch-size (None: the recipe's)
    train_limit: int | None   # trainer --limit-train (None: all 60,000)
    eval_images: int          # trainer --eval-images
    resume_arch: str          # the architecture --resume and torchrun are shown on
    resume_limit: int         # its --limit-train: one epoch is resume_limit // resume_batch steps
    resume_batch: int
    test_images: int          # exporter --test-images, and the images of the CUDA parity check
    max_batch: int            # server --max-batch, the in-process batch and the many-callers cell
    cell_seconds: float       # each benchmark cell
    archs: tuple[str, ...] = ()  # the architectures without --models; () means all of them

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# GPU: 8 s of bf16 training per architecture (all 8, one process), resnet18's resume and
# torchrun runs on 2,048 images, exports parity-checked on 500 test images, 1.5-second cells:
# about 7 minutes by an estimate of each step (none has run on a GPU yet); what does not fit in
# the 8 is skipped, last the --cuda-tf32 server.
# CPU: one architecture per input side (28, 96, 224 pixels), a step or two each: on 2 cores a
# torch.onnx export alone takes 10-20 s, so all eight would not fit in 5 minutes.
PLANS = {
    "cuda": Plan("cuda", 8.0, "bf16", 8.0, None, None, 1000, "resnet18", 2048, 128, 500, 32, 1.5),
    "cpu": Plan("cpu", 5.0, "auto", 1.0, 4, 32, 8, "lenet_bn", 64, 8, 16, 8, 0.3,
                archs=("lenet_bn", "resnet18", "alexnet")),
}


class Clock:
    """The run's wall-clock budget."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + minutes * 60

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        """At most `cap` seconds, and never past the deadline."""
        return max(1.0, min(cap, self.left()))


@dataclass
class Ran:
    """One finished subprocess."""

    args: list[str]
    rc: int             # 124: killed at its timeout
    seconds: float
    output: str         # stdout and stderr, interleaved
    log: Path
    out_of_time: bool = False  # killed at the run's deadline (not at the step's own cap)

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])


@dataclass
class Kit:
    """What every step needs: the plan, the architectures, the work folder, the clock and the
    record, and `run` for the real commands."""

    plan: Plan
    archs: list[str]
    work: Path
    clock: Clock
    record: Record
    test_images: object = None  # numpy uint8 [N, 1, 28, 28]: the first test images (preflight)

    @property
    def bench_models(self) -> list[str]:
        return [a for a in BENCH_MODELS if a in self.archs] or self.archs[:1]

    def run(self, name: str, args: list[str], cap: float, env: dict | None = None) -> Ran:
        """`python <args>` from the repository, its output kept in work/logs/<name>.log."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started, timeout = time.monotonic(), self.clock.timeout(cap)
        command = [sys.executable, *args]
        try:
            done = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
            rc, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as e:
            rc, output = 124, _text(e.output) + f"\n(killed after {e.timeout:.0f} s)"
        log.write_text(output)
        return Ran(command, rc, time.monotonic() - started, output, log,
                   out_of_time=rc == 124 and timeout < cap)

    def failed(self, step: str, name: str, ran: Ran, what: str) -> Check:
        """The check of a command that did not do its job: out of time when the run's deadline
        killed it, else failed with its exit status and the end of its output."""
        if ran.out_of_time:
            return Check(step, name, NO_TIME, f"{ran.log.name}: killed at the run's "
                         f"{self.plan.minutes:g}-minute deadline")
        return Check(step, name, FAILED, f"exit {ran.rc}, {what} ({ran.log}): {ran.tail(3)}")

    def out_of_time(self, step: str, needs: float) -> bool:
        """True (and one skipped check) when less than `needs` seconds are left for `step`."""
        if self.clock.left() >= needs:
            return False
        self.record.add(Check(step, step, NO_TIME, f"{self.clock.left():.0f} s left of "
                              f"{self.plan.minutes:g} min, {needs:.0f} s needed"))
        return True


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def set_paths(site: Path | None) -> None:
    """This process and every command it starts import the repository, the stubs and the wheels'
    folder (first, so onnxruntime-gpu wins over a CPU-only onnxruntime already installed)."""
    paths = [str(p) for p in (site, REPO, GEN) if p is not None]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    os.environ["PYTHONUNBUFFERED"] = "1"


# --- wheels --------------------------------------------------------------------------------------

_PART = re.compile(r"^(?P<wheel>.+\.whl)\.(?:part)?[0-9a-z]{1,4}$")


def gather_wheels(folder: Path, into: Path) -> list[Path]:
    """The wheels in `folder`: whole ones as they are, and split ones (`split -b 60M -d x.whl
    x.whl.` makes x.whl.00, x.whl.01, ...) joined in name order into `into`. Each must open as a
    zip archive with no damaged member, so a part that is missing or cut short is found here and
    not halfway through pip."""
    if not folder.is_dir():
        raise KitError(f"--wheels {folder}: no such folder")
    wheels = sorted(folder.glob("*.whl"))
    parts: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        m = _PART.match(path.name)
        if m and path.is_file():
            parts.setdefault(m["wheel"], []).append(path)
    into.mkdir(parents=True, exist_ok=True)
    for name, pieces in parts.items():
        joined = into / name
        with open(joined, "wb") as out:
            for piece in pieces:
                out.write(piece.read_bytes())
        wheels.append(joined)
    for wheel in wheels:
        _check_zip(wheel, parts.get(wheel.name, []))
    if not wheels:
        raise KitError(f"--wheels {folder}: no .whl files (nor .whl.NN parts) in it")
    return wheels


def _check_zip(wheel: Path, pieces: list[Path]) -> None:
    names = ", ".join(p.name for p in pieces)
    made_of = f" (joined from {len(pieces)} parts: {names})" if pieces else ""
    try:
        with zipfile.ZipFile(wheel) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise KitError(f"{wheel.name} is not a whole wheel{made_of}: {e}") from None
    if bad is not None:
        raise KitError(f"{wheel.name}: member {bad} is damaged{made_of}")


def install_wheels(wheels: list[Path], site: Path) -> str:
    """pip install the wheels into `site` without the network (--no-index) and without their
    dependencies (the GPU image has them: docs/gpu.md lists what to bring)."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--upgrade",
               "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise KitError(f"pip could not install the wheels into {site}: "
                       + (done.stderr.strip().splitlines() or ["(no output)"])[-1])
    return " ".join(w.name for w in wheels)


class KitError(RuntimeError):
    """Something the kit itself needs is missing or broken; the message says what to do."""


# --- stubs ---------------------------------------------------------------------------------------

def ensure_stubs() -> str:
    """The gRPC stubs in build/gen, generated from protos/ as `make stubs` does when they are
    missing (the GPU host has no `make install`); grpc_tools comes with grpcio-tools."""
    if (GEN / "fmnist" / "v1" / "classifier_pb2.py").is_file():
        return f"present in {GEN}"
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    GEN.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos",
                           f"--python_out={GEN}", f"--pyi_out={GEN}", f"--grpc_python_out={GEN}",
                           *protos], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise KitError(f"the gRPC stubs are not in {GEN} and grpc_tools could not make them "
                       f"({(done.stderr.strip().splitlines() or ['?'])[-1]}): bring the "
                       "grpcio-tools wheel (docs/gpu.md) or run `make stubs` where pip works")
    return f"generated into {GEN}"
