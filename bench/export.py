"""`make bench-export`: what BatchNorm folding and onnxruntime's graph optimizations buy on the CPU.

Per architecture, side by side in one run: PyTorch eager (the unfolded model); the exporter's raw
graphs of the unfolded and the folded model, each with onnxruntime's graph optimizations off
(ORT_DISABLE_ALL) and on (ORT_ENABLE_ALL); and the file `make export` writes (the folded graph
after onnxscript's optimizer) with them on, as the server runs it. Throughput at batch 1 and 32,
and session creation time. Every model includes the preprocessing (uint8 28x28 in).

The fold ratios compare like with like: the two raw graphs differ only by the folded
BatchNormalization nodes, at the same onnxruntime level. Both stay raw because onnxscript's
optimizer folds Conv/Gemm -> BatchNormalization by itself: optimized, the "unfolded" graph would
already be folded. With ORT_ENABLE_ALL onnxruntime fuses Conv + BatchNormalization too;
ORT_DISABLE_ALL shows what the folding saves a runtime that does not. The CPU model and its
vector extensions (AVX2, AVX-512, VNNI, AMX) are printed first: the figures depend on them.

Weights: the architecture's best.pt when there is one, else random weights with non-trivial
BatchNorm statistics (the timing does not depend on the values; the output says which).

    python -m bench.export [--models resnet18 lenet_bn] [--seconds 1] [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import onnxruntime as ort
import torch

from exporter import pipeline, to_onnx
from exporter.errors import ExportError
from exporter.fold import fold_batchnorm
from bench import results
from exporter.parity import cpu_session
from exporter.testing import random_net
from exporter.wrap import Servable
import model_contract as contract
from trainer import models
from cli_text import format_table

LEVELS = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
BATCHES = (1, 32)
# The extensions oneDNN's and onnxruntime's CPU kernels choose between; a figure from a machine
# with AMX or AVX-512 VNNI says little about one with AVX2 alone.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(models.ARCHITECTURES)
    p.add_argument("--models", nargs="+", default=names, choices=names, metavar="NAME",
                   help=f"architectures to measure (default: all: {' '.join(names)})")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="time spent measuring each cell, in 3 turns after one warm-up call "
                        "(default: 1)")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="where to look for checkpoints/<arch>/best.pt (default: $ARTIFACTS or "
                        "artifacts)")
    return p


def throughput(runners: dict, batch: int, seconds: float, rounds: int = 3) -> dict[str, float]:
    """Images/s of each runner at `batch`: the best of `rounds` turns of seconds/rounds each, the
    runners taking turns, so a burst of load from another process spoils one turn, not a cell."""
    images = torch.randint(0, 256, (batch, 1, contract.SIDE, contract.SIDE), dtype=torch.uint8)
    for run in runners.values():
        run(images)  # warm-up: allocations, oneDNN primitives, onnxruntime's arena
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            calls, start = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - start < seconds / rounds:
                run(images)
                calls += 1
            best[name] = max(best[name], calls * batch / (time.perf_counter() - start))
    return best


def network(arch: str, artifacts: Path) -> tuple[torch.nn.Module, str]:
    """The network from its best.pt when that loads, else random weights; and which it is."""
    try:
        path = pipeline.best_checkpoint(artifacts, arch)
        return pipeline.load_net(path, arch)[0], f"weights from {path}"
    except ExportError:
        return random_net(arch), "random, non-trivial BatchNorm (no usable best.pt)"


def cpu_description(cpuinfo: str) -> str:
    """The CPU model and which of ISA_FLAGS it has, from /proc/cpuinfo's text."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown model"
    if "flags" not in fields:
        return f"CPU: {model}, {os.cpu_count()} logical cores; ISA flags unknown (no /proc/cpuinfo)"
    flags = set(fields["flags"].split())
    have = [f for f in ISA_FLAGS if f in flags]
    lacks = [f for f in ISA_FLAGS if f not in flags]
    return (f"CPU: {model}, {os.cpu_count()} logical cores; ISA: {' '.join(have) or 'none'}"
            + (f" (no {' '.join(lacks)})" if lacks else ""))


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def measure_arch(arch: str, artifacts: Path, seconds: float) -> tuple[dict, list[dict]]:
    net, weights = network(arch, artifacts)
    side = models.get(arch).input_side
    fold = fold_batchnorm(net)
    reference = Servable(net, side).eval()
    graphs = {"unfolded": to_onnx.export(reference),
              "folded": to_onnx.export(Servable(fold.model, side).eval())}
    graphs["written"] = to_onnx.optimize(graphs["folded"])
    cells = [(variant, level) for variant in ("unfolded", "folded") for level in LEVELS]
    info = {"arch": arch, "weights": weights, "bn": f"{len(fold.folded)}/{len(fold.remaining)}"}
    runners = {}
    for variant, level in [*cells, ("written", "all")]:
        start = time.perf_counter()
        session = cpu_session(graphs[variant].SerializeToString(), LEVELS[level])
        info[f"{variant}:{level}"] = time.perf_counter() - start
        runners[f"{variant}:{level}"] = (
            lambda x, s=session: s.run([contract.LOGITS], {contract.INPUT: x.numpy()}))
    runners["torch"] = reference
    with torch.inference_mode():
        rows = [{"arch": arch, "batch": batch, **throughput(runners, batch, seconds)}
                for batch in BATCHES]
    for row in rows:
        row["fold:off"] = row["folded:off"] / row["unfolded:off"]
        row["fold:all"] = row["folded:all"] / row["unfolded:all"]
        row["vs torch"] = row["written:all"] / row["torch"]
    return info, rows


def main(args: argparse.Namespace) -> None:
    print(cpu_description(_read_cpuinfo()))
    print(f"onnxruntime {ort.__version__} (CPU), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.seconds:g} s per cell")
    infos, rows = [], []
    for arch in args.models:
        info, arch_rows = measure_arch(arch, args.artifacts, args.seconds)
        print(f"{arch}: {info['weights']}", flush=True)
        infos.append(info)
        rows += arch_rows
    print("\nthroughput, images/s (off: ORT_DISABLE_ALL, all: ORT_ENABLE_ALL); unfolded, folded: "
          "the raw exports; written: the file make export writes (folded, onnxscript-optimized); "
          "fold: folded ÷ unfolded at one level; vs torch: written:all ÷ PyTorch eager")
    print(format_table(rows, [("arch", "arch", ""), ("batch", "batch", "d"),
                              ("torch", "PyTorch", ".0f"),
                              ("unfolded:off", "unfolded:off", ".0f"),
                              ("folded:off", "folded:off", ".0f"), ("fold:off", "fold:off", ".2f"),
                              ("unfolded:all", "unfolded:all", ".0f"),
                              ("folded:all", "folded:all", ".0f"), ("fold:all", "fold:all", ".2f"),
                              ("written:all", "written:all", ".0f"),
                              ("vs torch", "vs torch", ".2f")]))
    print("\nsession creation, seconds (BN: folded/remaining BatchNorm layers)")
    print(format_table(infos, [("arch", "arch", ""), ("bn", "BN", ""),
                               *((f"{v}:{lv}", f"{v}:{lv}", ".2f")
                                 for v in ("unfolded", "folded") for lv in LEVELS),
                               ("written:all", "written:all", ".2f")]))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
