"""`make bench-export`: what BatchNorm folding and onnxruntime's graph optimizations buy on the CPU.

Per architecture, side by side in one run: PyTorch eager (the unfolded model), the unfolded ONNX
export and the folded one (the file `make export` writes), each ONNX model with onnxruntime's
graph optimizations off (ORT_DISABLE_ALL) and on (ORT_ENABLE_ALL); throughput at batch 1 and 32,
and session creation time. Every model includes the preprocessing (uint8 28x28 in).

The unfolded export is the exporter's raw graph, its optimizer off: onnxscript's optimizer folds
Conv/Gemm -> BatchNormalization by itself, so with it on the "unfolded" file would already be
folded. With ORT_ENABLE_ALL onnxruntime fuses Conv + BatchNormalization too; ORT_DISABLE_ALL shows
what the folding saves a runtime that does not.

Weights: the architecture's best.pt when there is one, else random weights with non-trivial
BatchNorm statistics (the timing does not depend on the values; the output says which).

    python -m bench.export [--models resnet18 lenet_bn] [--seconds 1] [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import onnxruntime as ort
import torch

from exporter import pipeline, to_onnx
from exporter.errors import ExportError
from exporter.fold import fold_batchnorm
from exporter.parity import cpu_session
from exporter.testing import random_net
from exporter.wrap import INPUT_NAME, Servable
from trainer import models
from trainer.metrics import format_table

LEVELS = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
BATCHES = (1, 32)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(models.ARCHITECTURES)
    p.add_argument("--models", nargs="+", default=names, choices=names, metavar="NAME",
                   help=f"architectures to measure (default: all: {' '.join(names)})")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="time spent measuring each cell, in 3 turns after one warm-up call "
                        "(default: 1)")
    p.add_argument("--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS", "artifacts")),
                   help="where to look for checkpoints/<arch>/best.pt (default: $ARTIFACTS or "
                        "artifacts)")
    return p


def throughput(runners: dict, batch: int, seconds: float, rounds: int = 3) -> dict[str, float]:
    """Images/s of each runner at `batch`: the best of `rounds` turns of seconds/rounds each, the
    runners taking turns, so a burst of load from another process spoils one turn, not a cell."""
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
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


def measure_arch(arch: str, artifacts: Path, seconds: float) -> tuple[dict, list[dict]]:
    net, weights = network(arch, artifacts)
    side = models.get(arch).input_side
    fold = fold_batchnorm(net)
    reference = Servable(net, side).eval()
    onnx_models = {"unfolded": to_onnx.export(reference).SerializeToString(),
                   "folded": to_onnx.optimize(to_onnx.export(Servable(fold.model, side).eval()))
                   .SerializeToString()}
    info = {"arch": arch, "weights": weights, "bn": f"{len(fold.folded)}/{len(fold.remaining)}"}
    runners = {}
    for variant, model in onnx_models.items():
        for level, opt in LEVELS.items():
            start = time.perf_counter()
            session = cpu_session(model, opt)
            info[f"{variant}:{level}"] = time.perf_counter() - start
            runners[f"{variant}:{level}"] = (
                lambda x, s=session: s.run(["logits"], {INPUT_NAME: x.numpy()}))
    runners["torch"] = reference
    with torch.inference_mode():
        rows = [{"arch": arch, "batch": batch, **throughput(runners, batch, seconds)}
                for batch in BATCHES]
    for row in rows:
        row["fold:off"] = row["folded:off"] / row["unfolded:off"]
        row["fold:all"] = row["folded:all"] / row["unfolded:all"]
        row["vs torch"] = row["folded:all"] / row["torch"]
    return info, rows


def main(args: argparse.Namespace) -> None:
    print(f"onnxruntime {ort.__version__} (CPU), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.seconds:g} s per cell")
    infos, rows = [], []
    for arch in args.models:
        info, arch_rows = measure_arch(arch, args.artifacts, args.seconds)
        print(f"{arch}: {info['weights']}", flush=True)
        infos.append(info)
        rows += arch_rows
    print("\nthroughput, images/s (off: ORT_DISABLE_ALL, all: ORT_ENABLE_ALL); fold: folded ÷ "
          "unfolded; vs torch: folded:all ÷ PyTorch eager")
    print(format_table(rows, [("arch", "arch", ""), ("batch", "batch", "d"),
                              ("torch", "PyTorch", ".0f"),
                              ("unfolded:off", "unfolded:off", ".0f"),
                              ("folded:off", "folded:off", ".0f"), ("fold:off", "fold:off", ".2f"),
                              ("unfolded:all", "unfolded:all", ".0f"),
                              ("folded:all", "folded:all", ".0f"), ("fold:all", "fold:all", ".2f"),
                              ("vs torch", "vs torch", ".2f")]))
    print("\nsession creation, seconds (BN: folded/remaining BatchNorm layers)")
    print(format_table(infos, [("arch", "arch", ""), ("bn", "BN", ""),
                               *((f"{v}:{lv}", f"{v}:{lv}", ".2f")
                                 for v in ("unfolded", "folded") for lv in LEVELS)]))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
