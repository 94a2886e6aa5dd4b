"""Precision variants against their fp32 model: accuracy, agreement, img/s at batch 1 and 32, the
ratio, and file size, per architecture (`make bench-variants`).

Reads the newest version of each exported architecture (`python -m exporter --variants int8`):
model.onnx and the variants beside it, and the variants its report.json says were not written
(with the reason). Accuracy and agreement are the exporter's, measured on the file itself on the
test images its metadata names; speed is measured here, now: INT8 on the CPU provider, FP16 on
CUDA when there is one (no GPU: said so). The CPU and its ISA flags come first: INT8's gain
depends on them (AVX-512 VNNI / AVX-VNNI / AMX: integer dot products; AVX2 alone: often none).

    python -m bench.variants --artifacts /tmp/varart --models resnet18
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import model_contract as mc
from bench import results
from exporter import metadata
from exporter.parity import cpu_session
from exporter.variants import cpu, cuda_available, cuda_session, images_per_second
from cli_text import HelpFormatter, format_table

# the targets of issue 15
INT8_TARGET = 2.0   # x fp32 at batch 32 on a CPU with VNNI or AMX
FP16_TARGET = 1.5   # x fp32 at batch 32 on a GPU
_INT8_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--artifacts", type=Path, default=mc.default_artifacts(),
                   help="folder whose models/ holds the exports ($ARTIFACTS, else artifacts)")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="architectures (default: every one exported under models/)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="seconds per speed cell, best of 3 turns after a warm-up")
    return p


def newest(arch_dir: Path) -> Path | None:
    found = [(v, p) for p in arch_dir.iterdir() if (v := mc.parse_version(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def measure_arch(arch: str, folder: Path, seconds: float) -> tuple[list[dict], list[str]]:
    """One row per model file (fp32 first), and a line per variant the exporter did not write."""
    fp32_path = folder / mc.MODEL_FILE
    fp32_bytes = fp32_path.read_bytes()
    sessions = {"cpu": cpu_session(fp32_bytes)}
    if cuda_available():
        sessions["cuda"] = cuda_session(fp32_bytes)
    base = {where: {b: images_per_second(session, b, seconds) for b in (1, 32)}
            for where, session in sessions.items() if session is not None}
    fp32 = {**_row(arch, folder, metadata.read_record(fp32_path), len(fp32_bytes)),
            "variant": "fp32", "agreement": 1.0}
    rows = [{**fp32, **_speed(base["cpu"], base["cpu"]), "provider": "CPU"}]
    if "cuda" in base:
        rows.append({**fp32, **_speed(base["cuda"], base["cuda"]), "provider": "CUDA"})
    for variant in mc.VARIANTS:
        path = folder / mc.variant_file(variant)
        if path.is_file():
            rows.append(_variant_row(arch, folder, path, base, seconds))
    return rows, _not_written(arch, folder)


def _row(arch: str, folder: Path, meta: mc.ModelMetadata, size: int) -> dict:
    return {"arch": arch, "version": int(folder.name), "variant": meta.variant,
            "accuracy": meta.test_accuracy, "test_images": meta.test_images,
            "agreement": meta.fp32_agreement, "mb": size / 1e6}


def _speed(measured: dict[int, float], fp32: dict[int, float]) -> dict:
    return {"b1": measured[1], "b32": measured[32], "ratio_b1": measured[1] / fp32[1],
            "ratio_b32": measured[32] / fp32[32], "images_per_s": measured[32]}


def _variant_row(arch: str, folder: Path, path: Path, base: dict, seconds: float) -> dict:
    """A variant's row: INT8 on the CPU provider, FP16 on CUDA (or said to have none)."""
    data, meta = path.read_bytes(), metadata.read_record(path)
    row = _row(arch, folder, meta, len(data))
    where = "cuda" if meta.variant == "fp16" else "cpu"
    session = cuda_session(data) if where == "cuda" else cpu_session(data)
    if session is None or where not in base:
        return {**row, "provider": "(no CUDA here)"}
    measured = {b: images_per_second(session, b, seconds) for b in (1, 32)}
    return {**row, **_speed(measured, base[where]), "provider": where.upper(),
            "recipe": (meta.variant_recipe or {}).get("name", "")}


def _not_written(arch: str, folder: Path) -> list[str]:
    """The variants report.json says the exporter did not write, and why."""
    try:
        report = json.loads((folder / mc.REPORT_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [f"{arch} v{folder.name} {v['variant']}: not written: {v['reason']}"
            for v in report.get("variants", []) if not v.get("written")]


def targets(rows: list[dict], isa: list[str]) -> list[str]:
    """The issue's targets, met or not, on this machine."""
    out = []
    int8 = [r for r in rows if r["variant"] == "int8" and "ratio_b32" in r]
    vnni = [f for f in _INT8_ISA if f in isa]
    for r in int8:
        if vnni:
            verdict = "met" if r["ratio_b32"] >= INT8_TARGET else "MISSED"
            out.append(f"{r['arch']} int8 at batch 32: {r['ratio_b32']:.2f}x fp32 on a CPU with "
                       f"{' '.join(vnni)} (target >= {INT8_TARGET:g}x: {verdict})")
        else:
            out.append(f"{r['arch']} int8 at batch 32: {r['ratio_b32']:.2f}x fp32 on a CPU without "
                       f"VNNI/AMX (no 2x target here; the server lists it as slower when < 1x)")
    fp16 = [r for r in rows if r["variant"] == "fp16" and "ratio_b32" in r]
    if not cuda_available():
        out.append("fp16: no GPU here (no CUDA provider): not measured; target >= "
                   f"{FP16_TARGET:g}x fp32 at batch 32 on a GPU")
    for r in fp16:
        verdict = "met" if r["ratio_b32"] >= FP16_TARGET else "MISSED"
        out.append(f"{r['arch']} fp16 at batch 32 on CUDA: {r['ratio_b32']:.2f}x fp32 "
                   f"(target >= {FP16_TARGET:g}x: {verdict})")
    return out


def main(args: argparse.Namespace) -> int:
    info = cpu()
    print(f"CPU: {info['model']}, {info['cores']} logical cores; ISA: {' '.join(info['isa'])} "
          f"(no {' '.join(f for f in ('avx512_vnni', 'avx_vnni', 'amx_int8') if f not in info['isa']) or '-'})")
    root = args.artifacts / "models"
    archs = args.models or (sorted(p.name for p in root.iterdir() if p.is_dir())
                            if root.is_dir() else [])
    rows, notes = [], []
    for arch in archs:
        folder = newest(root / arch) if (root / arch).is_dir() else None
        if folder is None:
            notes.append(f"{arch}: no exported version under {root}")
            continue
        arch_rows, arch_notes = measure_arch(arch, folder, args.seconds)
        rows += arch_rows
        notes += arch_notes
    if not rows:
        print(f"error: no exported models under {root}: run `python -m exporter --variants int8`")
        return 1
    print(format_table(rows, [("arch", "arch", ""), ("version", "v", "d"),
                              ("variant", "variant", ""), ("provider", "on", ""),
                              ("accuracy", "accuracy", ".4f"), ("test_images", "on images", "d"),
                              ("agreement", "agree fp32", ".2%"), ("b1", "img/s b1", ".0f"),
                              ("b32", "img/s b32", ".0f"), ("ratio_b1", "x fp32 b1", ".2f"),
                              ("ratio_b32", "x fp32 b32", ".2f"), ("mb", "MB", ".1f")]))
    for line in notes + targets(rows, info["isa"]):
        print(line)
    path = results.write("variants", {"rows": rows, "notes": notes,
                                      "targets": targets(rows, info["isa"])}, args.artifacts)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
