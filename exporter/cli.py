"""`python -m exporter`: turn each architecture's best.pt into a served, parity-checked ONNX model.

Each export folds BatchNorm into the layers before it, puts the preprocessing and a softmax inside
the graph, checks the graph, compares the ONNX model (onnxruntime, CPU) with the unfolded PyTorch
model on the whole test set, and only then writes artifacts/models/<arch>/<version>/model.onnx and
report.json, atomically, as the next version (a version folder appears whole or not at all).
An unchanged checkpoint is not exported twice. Temporary folders left by an exporter that was
killed mid-write are removed first. A failure (missing or unreadable checkpoint, refused export,
a models folder that cannot be written, full disk) is one error line for that architecture and
the others still run; the exit status is then 1.

Examples:
    python -m exporter                          # every architecture that has a best.pt
    python -m exporter --models resnet18 lenet_bn
    python -m exporter --models resnet18 --force --artifacts /tmp/run1
    python -m exporter --models resnet18 --variants int8,fp16   # + model.int8.onnx (CUDA: fp16)
    python -m exporter --models lenet_bn --variants int8 --variant-min-speedup 1
                                                # INT8 only where it runs faster than fp32 here
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import model_contract as contract
from cli_text import HelpFormatter, add_version, format_table
from exporter import pipeline, to_onnx, variants
from exporter.errors import ExportError
from exporter.parity import MAX_ABS_DIFF, MIN_AGREEMENT
from exporter.report import ExportReport, Skipped, summary
from trainer import data as fmnist
from trainer import models


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr (argparse's usage block buries it), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m exporter", description=__doc__, formatter_class=HelpFormatter)
    add_version(p)
    names = list(models.ARCHITECTURES)
    p.add_argument("--models", nargs="+", choices=names, metavar="NAME",
                   help=f"architectures to export (default: every one with a best.pt; "
                        f"choose from: {' '.join(names)})")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="folder with checkpoints/<arch>/best.pt; models go to its models/ "
                        "; $ARTIFACTS sets the default (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="export even when the latest version already holds this checkpoint")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the four Fashion-MNIST idx(.gz) files, for the parity check "
                        "(default: $FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist, "
                        "then a torchvision download into data/)")
    p.add_argument("--opset", type=int, default=to_onnx.DEFAULT_OPSET,
                   help=f"ONNX opset to export ({to_onnx.MIN_OPSET} at the lowest)")
    p.add_argument("--batch-size", type=int,
                   help="images per inference batch in the parity check; bounds its memory "
                        "(default: 500 for 28x28 networks, 100 for larger input sides)")
    p.add_argument("--max-abs-diff", type=float, default=MAX_ABS_DIFF,
                   help="largest |logit difference| allowed between ONNX and PyTorch")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="smallest share of test images on which ONNX and PyTorch must pick the "
                        "same class")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="check parity and measure accuracy on the first N test images only "
                        "(default: all 10,000). For quick demos: the count is recorded as "
                        "fmnist.test_images, and a later full export is not skipped as unchanged")
    _add_variant_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _add_variant_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", type=_variant_list, default=[], metavar="LIST",
                   help=f"precision variants to write beside the fp32 model, comma-separated "
                        f"({','.join(contract.VARIANTS)}; default: none). Each is gated against "
                        f"fp32 on the test images and written only when it passes")
    p.add_argument("--int8-max-drop", type=float, default=variants.MAX_DROP_POINTS,
                   metavar="POINTS",
                   help="gate: a variant's test accuracy may be at most this many points below "
                        "fp32's (applies to fp16 too)")
    p.add_argument("--variant-min-agreement", type=float, default=variants.MIN_AGREEMENT,
                   help="gate: smallest share of test images on which a variant picks fp32's "
                        "class")
    p.add_argument("--variant-min-speedup", type=float, metavar="X",
                   help="gate: a variant whose batch-32 speed on this machine is below X times "
                        "fp32's is not written (1: skip variants slower than fp32). Default: no "
                        "speed gate; a variant slower than fp32 is written with a warning line")
    p.add_argument("--calibration-images", type=int, default=variants.CALIBRATION_IMAGES,
                   metavar="N", help="training images that calibrate INT8")
    other = sorted(set(variants.RECIPES_BY_NAME) - {r.name for r in variants.INT8_RECIPES})
    p.add_argument("--int8-recipes", type=_recipe_list, metavar="LIST",
                   help=f"INT8 recipes to rank on training images, comma-separated (default: "
                        f"{','.join(r.name for r in variants.INT8_RECIPES)}; also: "
                        f"{','.join(other)})")


def _variant_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in contract.VARIANTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad) or repr(text)}: "
                                         f"choose from {', '.join(contract.VARIANTS)}")
    return names


def _recipe_list(text: str) -> tuple[variants.Recipe, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in variants.RECIPES_BY_NAME]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown recipe(s) {', '.join(bad) or repr(text)}: "
                                         f"choose from {', '.join(variants.RECIPES_BY_NAME)}")
    return tuple(variants.RECIPES_BY_NAME[n] for n in names)


def _bad_values(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags' values, before any work."""
    for flag, value in (("--batch-size", args.batch_size), ("--test-images", args.test_images),
                        ("--calibration-images", args.calibration_images)):
        if value is not None and value < 1:
            return f"{flag} must be at least 1"
    if args.opset < to_onnx.MIN_OPSET:
        return f"--opset {args.opset}: torch.onnx exports opset {to_onnx.MIN_OPSET} and up"
    if args.variant_min_speedup is not None and not args.variant_min_speedup > 0:
        return "--variant-min-speedup must be above 0 (1: as fast as fp32)"
    return None


def _options(args: argparse.Namespace) -> pipeline.Options:
    return pipeline.Options(
        opset=args.opset, batch_size=args.batch_size, max_abs_diff=args.max_abs_diff,
        min_agreement=args.min_agreement, force=args.force, progress=not args.no_progress,
        test_images=args.test_images, variants=tuple(args.variants),
        gate=variants.Gate(args.int8_max_drop, args.variant_min_agreement,
                           args.variant_min_speedup),
        calibration_images=args.calibration_images,
        int8_recipes=args.int8_recipes or variants.INT8_RECIPES,
        log=lambda line: print(line, flush=True),
        warn=lambda line: print(line, file=sys.stderr, flush=True))


def main(args: argparse.Namespace) -> int:
    """Export each architecture in turn; a failure stops that one, not the others (exit 1)."""
    bad = _bad_values(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    archs = args.models or pipeline.archs_with_checkpoints(args.artifacts)
    if not archs:
        print(f"error: no {args.artifacts}/checkpoints/<arch>/best.pt found: run `make train` "
              f"first (or point --artifacts at the folder that holds checkpoints/)",
              file=sys.stderr)
        return 1
    options, data = _options(args), functools.cache(lambda: _load_data(args.data_dir))
    rows, failed = [], 0
    for arch in archs:
        try:
            result = pipeline.export_arch(arch, args.artifacts, data, options)
        except fmnist.DataError as err:  # every export needs the test set: stop here
            print(f"error: {err}", file=sys.stderr)
            return 1
        except (ExportError, OSError) as err:
            print(f"error: {_one_line(arch, err)}", file=sys.stderr)
            rows.append({"arch": arch, "status": "FAILED"})
            failed += 1
            continue
        print(_describe(result), flush=True)
        rows.append(_row(result))
    if len(rows) > 1:
        print(format_table(rows, [("arch", "arch", ""), ("status", "status", ""),
                                  ("version", "version", "d"), ("accuracy", "ONNX acc", ".4f"),
                                  ("max_abs_diff", "max |Δ|", ".1e"),
                                  ("agreement", "agree", ".2%"),
                                  ("mb", "MB", ".1f"), ("seconds", "s", ".1f")]))
    return 1 if failed else 0


def _one_line(arch: str, err: Exception) -> str:
    """ExportError messages already name the architecture and what to do; an OSError (full disk,
    no permission, a path taken by something else) gets the architecture it stopped."""
    if isinstance(err, ExportError):
        return str(err)
    return f"{arch}: not exported: {err}"


def _load_data(data_dir: Path | None) -> fmnist.FashionMNIST:
    data = fmnist.load(data_dir)
    print(f"test images: {len(data.test_images)} from {data.source}", flush=True)
    return data


def _describe(result: ExportReport | Skipped) -> str:
    if isinstance(result, Skipped):
        return (f"{result.arch}: {result.checkpoint} unchanged since version {result.version} "
                f"(sha256 {result.sha256[:12]}); skipped, --force exports it again")
    return summary(result)


def _row(result: ExportReport | Skipped) -> dict:
    if isinstance(result, Skipped):
        return {"arch": result.arch, "status": "unchanged", "version": result.version}
    p = result.parity
    return {"arch": result.arch, "status": "written", "version": result.version,
            "accuracy": p["onnx_accuracy"], "max_abs_diff": p["max_abs_diff"],
            "agreement": p["top1_agreement"], "mb": result.file_bytes / 1e6,
            "seconds": result.seconds["total"]}
