"""Step 3: `python -m exporter --variants fp16` for every trained architecture, then each model's
parity on the CUDA provider, with TF32 off (what the server runs) and on (--cuda-tf32).

The exporter checks ONNX against PyTorch on onnxruntime's CPU provider and gates FP16 on CUDA
(without CUDA it says so and writes none). Parity on CUDA is then measured here: the same test
images through onnxruntime on the CPU and on CUDA, set up as the server sets it up
(execution_providers.py); each setting is held to the probe tolerance the server would hold
it to. INT8 is a CPU variant (`make bench-variants`), not checked on CUDA. The rehearsal runs the
same comparison with the CPU provider standing in for CUDA and reports it as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpu_check.kit import Kit
from gpu_check.record import FAILED, NO_CUDA, PASSED, Check, passed_if, skipped


def export_all(kit: Kit) -> list[Check]:
    root = kit.work / "train"
    args = ["-m", "exporter", "--models", *kit.archs, "--artifacts", str(root), "--variants",
            "fp16", "--test-images", str(kit.plan.test_images), "--no-progress"]
    ran = kit.run("export", args, cap=90 * len(kit.archs))
    checks = []
    for arch in kit.archs:
        report = newest_report(root / "models" / arch)
        if report is None:
            checks.append(kit.failed("export", f"export {arch}", ran, "no report.json"))
            continue
        checks.append(_exported(arch, report))
        checks.append(_fp16(kit, arch, report))
    checks.append(Check("export", "int8 variants", skipped("CPU-only"),
                        "INT8 (QDQ) is made for and measured on CPUs (make bench-variants); "
                        "the kit does not run it on CUDA"))
    return checks


def newest_report(arch_dir: Path) -> dict | None:
    versions = sorted((int(d.name) for d in arch_dir.glob("[0-9]*") if d.name.isdigit()),
                      reverse=True)
    for v in versions:
        path = arch_dir / str(v) / "report.json"
        if path.is_file():
            return {**json.loads(path.read_text()), "folder": str(path.parent)}
    return None


def _exported(arch: str, report: dict) -> Check:
    p = report["parity"]
    return Check("export", f"export {arch}", PASSED,
                 f"v{report['version']}, parity (CPU) on {p['images']} test images: max |Δ logits| "
                 f"{p['max_abs_diff']:.2g}, agreement {p['top1_agreement']:.2%}",
                 {"version": report["version"], "file_bytes": report["file_bytes"],
                  "parity": p, "seconds": report["seconds"].get("total")})


def _fp16(kit: Kit, arch: str, report: dict) -> Check:
    v = next((v for v in report.get("variants", []) if v["variant"] == "fp16"), None)
    if v is None:
        return Check("export", f"fp16 {arch}", FAILED, "the exporter reported no fp16 variant")
    if not v["written"]:
        status = NO_CUDA if not kit.plan.cuda and "no CUDA" in v["reason"] else FAILED
        return Check("export", f"fp16 {arch}", status, f"not written: {v['reason']}",
                     {"reason": v["reason"]})
    size = v["file_bytes"] / report["file_bytes"]
    speed = v.get("speed", {}).get("batch32", {})
    return Check("export", f"fp16 {arch}", PASSED,
                 f"written: accuracy {v['accuracy']:.4f} vs fp32 {v['fp32_accuracy']:.4f}, "
                 f"agreement {v['fp32_agreement']:.2%}, max |Δ prob| "
                 f"{v.get('max_abs_diff_probabilities', float('nan')):.2g}, size {size:.2f}x fp32, "
                 f"batch 32 {speed.get('ratio', float('nan')):.2f}x fp32 on CUDA",
                 {k: v.get(k) for k in ("accuracy", "fp32_accuracy", "fp32_agreement",
                                        "max_abs_diff_probabilities", "file_bytes", "speed")}
                 | {"size_ratio": round(size, 3)})


# --- parity on CUDA, TF32 off and on -------------------------------------------------------------

def cuda_parity(kit: Kit) -> list[Check]:
    """Every exported fp32 model: CUDA (TF32 off, then on) against the CPU provider."""
    from execution_providers import TF32_PROBE_TOLERANCE

    import model_contract as mc

    checks = []
    for arch in kit.archs:
        report = newest_report(kit.work / "train" / "models" / arch)
        if report is None:
            checks.append(Check("parity", f"CUDA parity {arch}", skipped("not exported")))
            continue
        figures = compare(kit, Path(report["folder"]) / mc.MODEL_FILE)
        checks.append(_held(kit, "parity", f"CUDA parity {arch} (TF32 off)", figures[False],
                            mc.PROBE_TOLERANCE))
        checks.append(_held(kit, "tf32", f"TF32 on {arch}", figures[True], TF32_PROBE_TOLERANCE))
    return checks


def _held(kit: Kit, step: str, name: str, figures: dict, tolerance: float) -> Check:
    worst = max(figures["max_abs_diff_probabilities"], figures["probe_max_abs_diff"])
    figures = {**figures, "tolerance": tolerance}
    line = (f"max |Δ prob| {figures['max_abs_diff_probabilities']:.2g} on "
            f"{figures['images']} test images, probe {figures['probe_max_abs_diff']:.2g} "
            f"(tolerance {tolerance:g}), agreement {figures['top1_agreement']:.2%}, "
            f"max |Δ logits| {figures['max_abs_diff_logits']:.2g}")
    if not kit.plan.cuda:
        return Check(step, name, NO_CUDA, "rehearsed on the CPU provider: " + line, figures)
    return Check(step, name, passed_if(worst <= tolerance), line, figures)


def compare(kit: Kit, path: Path) -> dict[bool, dict]:
    """The model on the device session, TF32 off and on, against the CPU provider on the kit's
    test images, and its probe against the probabilities the exporter embedded."""
    import onnx

    import model_contract as mc

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = mc.ModelMetadata.from_props(props)
    probe = mc.decode_probe(meta.probe)
    want = _outputs(cpu_session(path), kit.test_images)
    out = {}
    for tf32 in (False, True):
        device = device_session(kit, path, tf32)
        got = _outputs(device, kit.test_images)
        (probe_out,) = device.run([mc.PROBABILITIES], {mc.INPUT: probe.images})
        out[tf32] = {"images": len(kit.test_images), "provider": device.get_providers()[0],
                     "tf32": tf32, "max_abs_diff_logits": float(np.abs(got[0] - want[0]).max()),
                     "max_abs_diff_probabilities": float(np.abs(got[1] - want[1]).max()),
                     "top1_agreement": float((got[0].argmax(1) == want[0].argmax(1)).mean()),
                     "probe_max_abs_diff": float(np.abs(probe_out - probe.probabilities).max())}
    return out


def device_session(kit: Kit, path: Path, tf32: bool):
    """CUDA as the server sets it up (TF32 as asked); the CPU provider in the rehearsal."""
    from execution_providers import CudaOptions, cuda_session

    if not kit.plan.cuda:
        return cpu_session(path)
    session = cuda_session(path, CudaOptions(tf32=tf32))
    if session is None:
        raise RuntimeError(f"{path}: onnxruntime did not put it on the CUDA provider")
    return session


def cpu_session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _outputs(session, images: np.ndarray, batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    import model_contract as mc
    parts = [session.run(list(mc.OUTPUTS), {mc.INPUT: images[i:i + batch]})
             for i in range(0, len(images), batch)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
