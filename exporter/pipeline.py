"""One architecture's export, start to finish: checkpoint -> fold -> wrap -> export -> check ->
compare -> write. Each step is its own module and testable alone; this file only strings them
together, times them, and turns their results into the report. Nothing is written unless every
check passed, and then it is written atomically as the next version (exporter/versions.py)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx
import onnxruntime
import onnxscript
import torch
from google.protobuf.message import DecodeError
from torch import nn

import model_contract as contract
from exporter import metadata, to_onnx, versions
from exporter import variants as precision
from exporter.checks import check_graph
from exporter.errors import ExportError
from exporter.fold import FoldResult, fold_batchnorm
from exporter.parity import (MAX_ABS_DIFF, MIN_AGREEMENT, Parity, cpu_session, failures,
                             measure_logits, probe)
from exporter.report import ExportReport, Skipped
from exporter.wrap import Servable
from trainer import checkpoint, models
from trainer.data import FashionMNIST

BEST = "best.pt"


@dataclass(frozen=True)
class Options:
    opset: int = to_onnx.DEFAULT_OPSET
    batch_size: int | None = None  # None: by input side, see parity_batch_size
    max_abs_diff: float = MAX_ABS_DIFF
    min_agreement: float = MIN_AGREEMENT
    force: bool = False
    progress: bool = False
    test_images: int | None = None  # None: the whole test set; N: its first N images (quick runs)
    variants: tuple[str, ...] = ()  # precision variants to try beside fp32 (exporter/variants.py)
    gate: precision.Gate = precision.Gate()
    calibration_images: int = precision.CALIBRATION_IMAGES
    int8_recipes: tuple[precision.Recipe, ...] = precision.INT8_RECIPES
    log: Callable[[str], None] = print
    warn: Callable[[str], None] = functools.partial(print, file=sys.stderr)


def parity_batch_size(input_side: int) -> int:
    """Images per parity batch. Measured on 2 CPU cores: 28x28 nets run ~3x faster at 500 than at
    100 (per-call overhead dominates), 96 and 224 nets are no faster above 100 and hold ~1.6 GB of
    activations per 100 images at 224."""
    return 500 if input_side <= 28 else 100


def best_checkpoint(artifacts: str | os.PathLike, arch: str) -> Path:
    path = checkpoint.checkpoint_dir(artifacts, arch) / BEST
    if not path.is_file():
        raise ExportError(f"{path} not found: run `make train MODELS={arch}` first "
                          f"(or point --artifacts at the folder that holds checkpoints/)")
    return path


def model_dir(artifacts: str | os.PathLike, arch: str) -> Path:
    """Where `arch`'s versions are published: <artifacts>/models/<arch>."""
    return Path(artifacts) / "models" / arch


def archs_with_checkpoints(artifacts: str | os.PathLike) -> list[str]:
    """Every folder of checkpoints/ holding a best.pt, registry order first; unknown names last
    (their export then fails with a message that says so)."""
    root = Path(artifacts) / "checkpoints"
    found = {p.parent.name for p in root.glob(f"*/{BEST}")}
    known = [a for a in models.ARCHITECTURES if a in found]
    return known + sorted(found - set(known))


def load_net(path: Path, arch: str) -> tuple[nn.Module, dict]:
    """The checkpoint's network in eval mode, and the checkpoint (weights_only=True)."""
    known = ", ".join(models.ARCHITECTURES)
    if arch not in models.ARCHITECTURES:
        raise ExportError(f"{path}: {arch!r} is not an architecture trainer/models.py registers "
                          f"(known: {known})")
    try:
        ckpt = checkpoint.load(path)
    except Exception as err:  # truncated file, foreign pickle, other format: all unusable alike
        raise ExportError(f"cannot read {path} (torch.load with weights_only=True): "
                          f"{_first_sentence(err)}; retrain with `make train MODELS={arch}`"
                          ) from err
    if ckpt["arch"] not in models.ARCHITECTURES:
        raise ExportError(f"{path} holds architecture {ckpt['arch']!r}, which trainer/models.py "
                          f"does not register (known: {known})")
    if ckpt["arch"] != arch:
        raise ExportError(f"{path} holds {ckpt['arch']!r}, not {arch!r}: move it to "
                          f"checkpoints/{ckpt['arch']}/ or retrain with `make train MODELS={arch}`")
    net = models.build(arch)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ExportError(f"{path}: its weights do not fit {arch}: {_first_sentence(err)}") from err
    return net.eval(), ckpt


def _first_sentence(err: Exception) -> str:
    """torch's load errors run over many lines; the line that names the problem is enough."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    named = next((line for line in lines if line.startswith(("WeightsUnpickler error",
                                                             "Missing key", "Unexpected key",
                                                             "size mismatch"))), lines[0])
    named = named.split(". ")[0].rstrip(".")
    return named if len(named) <= 200 else named[:200] + "…"


def export_arch(arch: str, artifacts: str | os.PathLike, data: Callable[[], FashionMNIST],
                options: Options = Options()) -> ExportReport | Skipped:
    """Export `arch`'s best.pt as the next version, or skip it when the latest version already
    holds this very checkpoint (same sha256), was checked on as many test images, and
    `options.force` is off. What can be refused cheaply (no checkpoint, a models folder that
    cannot be written, an unreadable checkpoint) is refused before the minutes of work; what a
    killed exporter left in the arch folder is removed first."""
    clock = _Clock()
    ckpt_path = best_checkpoint(artifacts, arch)
    arch_dir = model_dir(artifacts, arch)
    problem = versions.unwritable(arch_dir)
    if problem:
        raise ExportError(f"{arch}: not exported: {problem}")
    stale = versions.remove_stale(arch_dir)
    if stale:
        options.log(f"{arch}: removed {len(stale)} temporary folder(s) left by an exporter that "
                    f"did not finish: {', '.join(stale)}")
    with clock("load"):
        dataset = _test_subset(data(), options.test_images)
        sha = contract.sha256_file(ckpt_path)
        unchanged = (None if options.force
                     else _version_holding(arch_dir, sha, len(dataset.test_labels),
                                           options.variants))
        if unchanged is not None:
            return Skipped(arch, unchanged, str(ckpt_path), sha)
        net, ckpt = load_net(ckpt_path, arch)
    built = _build(arch, net, dataset, sha, options, clock)
    report = functools.partial(
        ExportReport, **_report_fields(built, options, clock), arch=arch,
        checkpoint={"path": str(ckpt_path), "sha256": sha, "epoch": ckpt.get("epoch"),
                    "test_accuracy": ckpt.get("test_accuracy")},
        data_source=dataset.source)
    extra = {contract.variant_file(v.variant): v.model_bytes for v in built.variants if v.written}
    return _publish(arch_dir, built.model_bytes, report, extra)


@dataclass(frozen=True)
class _Built:
    """Everything an export made and measured before it is written."""

    fold: FoldResult
    graphs: dict[str, onnx.ModelProto]   # "unfolded", "folded", "written"
    parity: Parity
    batch_size: int                      # images per parity batch
    props: dict[str, str]                # the metadata_props written into model.onnx
    model_bytes: bytes
    variants: list[precision.Variant]


def _build(arch: str, net: nn.Module, dataset: FashionMNIST, sha: str, options: Options,
           clock: "_Clock") -> _Built:
    """fold -> wrap -> export -> check -> compare (refused: ExportError) -> variants -> metadata."""
    side = models.get(arch).input_side
    with clock("fold"):
        fold = fold_batchnorm(net)
    reference = Servable(net, side).eval()
    graphs = _export_and_check(reference, Servable(fold.model, side).eval(), arch, options.opset,
                               clock)
    model, batch_size = graphs["written"], options.batch_size or parity_batch_size(side)
    with clock("parity"):
        session = cpu_session(model.SerializeToString())
        parity, onnx_logits = measure_logits(
            session, reference, dataset.test_images, dataset.test_labels, batch_size,
            desc=f"{arch} parity" if options.progress else None)
        images = dataset.test_images.numpy()
        probe_value = probe(session, images)
    missed = failures(parity, options.max_abs_diff, options.min_agreement)
    if missed:
        raise ExportError(f"{arch}: parity check failed, nothing written: {'; '.join(missed)} "
                          f"(ONNX accuracy {parity.onnx_accuracy:.4f}, PyTorch "
                          f"{parity.torch_accuracy:.4f}, {parity.images} test images)")
    record = metadata.build(arch, side, fold, parity, sha, probe_value)
    ref = precision.Reference(model, session, record, images, dataset.test_labels.numpy(),
                              onnx_logits, dataset.train_images)
    with clock("variants"):
        built = _variants(arch, ref, options)
    props = metadata.attach(model, record)
    return _Built(fold, graphs, parity, batch_size, props, model.SerializeToString(), built)


def _report_fields(built: _Built, options: Options, clock: "_Clock") -> dict:
    """The report's figures from the build (the caller adds the checkpoint and the data)."""
    fold = built.fold
    return dict(
        bn_folded=[{"bn": f.bn, "into": f.into} for f in fold.folded],
        bn_remaining=[{"bn": r.bn, "reason": r.reason} for r in fold.remaining],
        parity={**built.parity.as_dict(), "batch_size": built.batch_size,
                "limit_max_abs_diff": options.max_abs_diff,
                "limit_top1_agreement": options.min_agreement},
        nodes={name: to_onnx.op_counts(graph) for name, graph in built.graphs.items()},
        opset=options.opset, ir_version=built.graphs["written"].ir_version,
        file_bytes=len(built.model_bytes), seconds={**clock.seconds, "total": clock.total()},
        metadata=built.props, variants=[v.as_report() for v in built.variants],
        versions={"torch": str(torch.__version__), "onnx": onnx.__version__,
                  "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__})


def _variants(arch: str, ref: precision.Reference, options: Options) -> list[precision.Variant]:
    """Build and gate each requested variant; one line each says what became of it, and one
    warning line more when it is written although slower than fp32."""
    built = []
    for name in options.variants:
        if name == "int8":
            v = precision.int8(ref, options.gate, options.int8_recipes,
                               options.calibration_images, log=options.log)
        else:
            v = precision.fp16(ref, options.gate)
        options.log(v.line(arch))
        if v.warning:
            options.warn(f"warning: {arch}: {v.warning}")
        built.append(v)
    return built


def _publish(arch_dir: Path, model_bytes: bytes, report: Callable[..., ExportReport],
             extra: dict[str, bytes] | None = None) -> ExportReport:
    """Write model.onnx, the variants that passed (`extra`: file name -> bytes) and report.json
    as the next version, in one locked, atomic publish. The report names its version and path,
    which only versions.publish knows, once it holds the arch folder's lock."""
    def placed(version: int) -> ExportReport:
        return report(version=version,
                      model=str(contract.model_path(arch_dir.parent, arch_dir.name, version)))

    version, _ = versions.publish(arch_dir, lambda v: {contract.MODEL_FILE: model_bytes,
                                                       **(extra or {}),
                                                       contract.REPORT_FILE: placed(v).to_json()})
    return placed(version)


def _export_and_check(reference: Servable, servable: Servable, arch: str, opset: int,
                      clock: "_Clock") -> dict[str, onnx.ModelProto]:
    """The raw graphs of the unfolded and the folded model (for the report's node counts, and so
    the BatchNorm check sees our folding rather than onnxscript's), and the optimized one to
    write."""
    with clock("export"):
        graphs = {"unfolded": to_onnx.export(reference, opset),
                  "folded": to_onnx.export(servable, opset)}
        graphs["written"] = to_onnx.optimize(graphs["folded"])
    with clock("check"):
        check_graph(graphs["folded"], f"{arch}, as exported")
        check_graph(graphs["written"], f"{arch}, optimized")
    return graphs


def _test_subset(dataset: FashionMNIST, n: int | None) -> FashionMNIST:
    """The first `n` test images (all when n is None); the count goes into the metadata."""
    if n is None or n >= len(dataset.test_labels):
        return dataset
    return replace(dataset, test_images=dataset.test_images[:n], test_labels=dataset.test_labels[:n])


def _version_holding(arch_dir: Path, sha: str, test_images: int,
                     wanted_variants: tuple[str, ...] = ()) -> int | None:
    """The latest version, when it was exported from the checkpoint with this sha256, checked
    on `test_images` images (a quick export on a subset does not stand in for a full one) and
    tried with every variant asked for now (written or refused by the gate: its report says)."""
    published = versions.versions(arch_dir)
    if not published:
        return None
    folder = arch_dir / str(published[-1])
    try:
        record = metadata.read_record(folder / contract.MODEL_FILE)
        tried = ({v.get("variant") for v in
                  json.loads((folder / contract.REPORT_FILE).read_text()).get("variants", [])}
                 if wanted_variants else set())
    except (OSError, DecodeError, ValueError, AttributeError):
        return None  # an unreadable latest version never blocks a new export
    same = (record.source_sha256 == sha and record.test_images == test_images
            and set(wanted_variants) <= tried)
    return published[-1] if same else None


class _Clock:
    """Seconds per named step; `total` counts from the clock's creation."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str):
        t = time.perf_counter()
        yield
        self.seconds[step] = round(time.perf_counter() - t, 2)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)
