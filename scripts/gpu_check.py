"""`make gpu-check`: prove every CUDA path of fmnist-serve in one run, on the GPU it runs on.

    python scripts/gpu_check.py                          # CUDA; stops in one line without it
    python scripts/gpu_check.py --wheels /tmp/wheels     # install onnxruntime-gpu etc. first
    python scripts/gpu_check.py --device cpu             # the rehearsal: same steps, tiny budgets

Steps, each through the real command (python -m trainer / exporter / server as subprocesses):
  1. preflight: GPU, driver, CUDA, torch, onnxruntime; is the CUDA provider really active after
     onnxruntime.preload_dlls()? (a convolution run the way the server sets CUDA up)
  2. training on CUDA (bf16): every architecture for a fixed budget, examples/s beside d2l's GPU
     figures; --resume from a last.pt against a run never stopped; torchrun --nproc_per_node=1
  3. export with FP16 (gate, size); parity on the CUDA provider, TF32 off and on; INT8 noted
  4. the server with --device cuda: every model and variant loaded, probes, bucket warm-up;
     in-process onnxruntime (plain and IO binding) against the server at 1 and 32 callers, for
     lenet_bn and resnet18 in fp32 and fp16; a --cuda-tf32 server
  5. gpu-check.json (every figure) and gpu-check.md in --out, rewritten after every step

On CUDA the run takes at most 8 minutes; `--device cpu` (the rehearsal, at most 5 minutes on 2
cores) runs the same code with the CPU standing in, and what only CUDA can show is "skipped: no
CUDA". Exit status: 0 when nothing failed, 1 otherwise. docs/gpu.md: what to bring to a GPU host
(wheels, data) and what the rehearsal cannot prove.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_check package beside it

from gpu_check import kit as kitmod  # noqa: E402
from gpu_check.record import FAILED, Check, Record, say, skipped  # noqa: E402

DEVICES = ("auto", "cuda", "cpu")
STEPS = ("train", "resume", "torchrun", "export", "parity", "serve", "bench", "tf32")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="cuda (auto means cuda here): the real check; cpu: the rehearsal")
    p.add_argument("--out", type=Path,
                   default=Path(os.environ.get("GPU_CHECK_OUT") or "artifacts/gpu-check"),
                   help="where gpu-check.json and gpu-check.md go ($GPU_CHECK_OUT, else "
                        "artifacts/gpu-check)")
    p.add_argument("--wheels", type=Path, metavar="DIR",
                   help="install every wheel in DIR (whole, or split into DIR/x.whl.00, .01, ...) "
                        "into <work>/site with pip --no-index before anything else; nothing "
                        "comes from the network")
    p.add_argument("--work", type=Path, metavar="DIR",
                   help="keep checkpoints, models and each command's log here (default: a "
                        "temporary folder, removed at the end)")
    p.add_argument("--steps", type=_steps_list, default=STEPS, metavar="LIST",
                   help=f"comma-separated steps after the preflight (default: all: "
                        f"{','.join(STEPS)}); export and later steps read --work's train/, so "
                        "`--work DIR --steps serve,bench` redoes only those on an earlier run")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="architectures to check (default on CUDA: every one in "
                        "trainer.models.ARCHITECTURES; in the rehearsal: lenet_bn, resnet18 and "
                        "alexnet, one per input side)")
    return p


def _steps_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in STEPS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(bad) or repr(text)}: "
                                         f"choose from {','.join(STEPS)}")
    return names


def _meta(args: argparse.Namespace, plan: kitmod.Plan) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=kitmod.REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"device": plan.device, "minutes": plan.minutes, "plan": plan.__dict__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit or "unknown", "command": " ".join(["python", *sys.argv])}


def _prepare(args: argparse.Namespace, work: Path, record: Record) -> None:
    """Wheels into work/site (first on every path), then the repository and stubs."""
    site = None
    if args.wheels:
        wheels = kitmod.gather_wheels(args.wheels, work / "joined-wheels")
        site = work / "site"
        record.info["wheels"] = kitmod.install_wheels(wheels, site)
    kitmod.set_paths(site)


def _steps(kit: kitmod.Kit, wanted: tuple[str, ...]) -> None:
    """Steps 2-4 in order, those in `wanted`; each one that no longer fits in the budget is
    skipped. `bench` runs on the server `serve` starts (asking for bench starts it)."""
    from gpu_check import benchmark, exporting, serving, training

    table = {"train": (60, training.train_all), "resume": (30, training.resume),
             "torchrun": (20, training.torchrun), "export": (40, exporting.export_all),
             "parity": (15, exporting.cuda_parity)}
    for step, (needs, run) in table.items():
        if _asked(kit, step, wanted) and not kit.out_of_time(step, needs):
            _timed(kit, step, run)
    bench = _asked(kit, "bench", wanted)
    if (bench or _asked(kit, "serve", wanted)) and not kit.out_of_time("serve", 30):
        _, server = _timed(kit, "serve", serving.serve)
        if server is not None:
            try:
                if bench:
                    _timed(kit, "bench", lambda k: benchmark.bench(k, server))
            finally:
                server.stop()
    if _asked(kit, "tf32", wanted) and not kit.out_of_time("tf32", 30):
        _timed(kit, "tf32", serving.serve_tf32)


def _asked(kit: kitmod.Kit, step: str, wanted: tuple[str, ...]) -> bool:
    if step in wanted:
        return True
    kit.record.add(Check(step, step, skipped("not asked for (--steps)")))
    return False


def _timed(kit: kitmod.Kit, step: str, run):
    """Run one step, add its checks (the first item when it returns a pair), time it, write."""
    started = time.monotonic()
    result = run(kit)
    checks = result[0] if isinstance(result, tuple) else result
    kit.record.extend(checks)
    kit.record.meta.setdefault("step_seconds", {})[step] = round(time.monotonic() - started, 1)
    kit.record.write()
    return result


def main(args: argparse.Namespace) -> int:
    plan = kitmod.PLANS["cpu" if args.device == "cpu" else "cuda"]
    clock = kitmod.Clock(plan.minutes)
    work = args.work or Path(tempfile.mkdtemp(prefix="fmnist-gpu-check-"))
    record = Record(args.out, _meta(args, plan))
    try:
        _prepare(args, work, record)
        from trainer import models
        archs = args.models or list(plan.archs or models.ARCHITECTURES)
        unknown = sorted(set(archs) - set(models.ARCHITECTURES))
        if unknown:
            raise kitmod.KitError(f"unknown architecture(s) {', '.join(unknown)}; choose from "
                                  f"{', '.join(models.ARCHITECTURES)}")
        kit = kitmod.Kit(plan, archs, work, clock, record)
        from gpu_check.preflight import preflight
        stop = preflight(kit)
        if stop is not None:
            say(f"gpu-check: stopped: {stop}")
            return 1
        _steps(kit, tuple(args.steps))
    except kitmod.KitError as e:
        record.add(Check("preflight", "kit", FAILED, str(e)))
        say(f"gpu-check: stopped: {e}")
        return 1
    finally:
        record.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    counts = record.counts()
    say(f"gpu-check on {plan.device}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f" in {time.monotonic() - record.started:.0f} s; {args.out / 'gpu-check.md'}")
    return 1 if record.failed() else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
