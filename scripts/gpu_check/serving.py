"""Step 4: `python -m server --device cuda` over every exported model and variant.

What the server says is what is checked: its loaded-model lines (provider, the CUDA options
onnxruntime reports, probe max |Δ| and the tolerance it was held to, load seconds), its batcher
lines (padded buckets warmed, and how long that took), its refusals, and ListModels. A second,
smaller server with --cuda-tf32 shows the probes and the tolerance with TF32 on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gpu_check.exporting import newest_report
from gpu_check.kit import Kit
from gpu_check.record import FAILED, NO_CUDA, Check, passed_if

LOADED = re.compile(r"loaded model (?P<name>\S+) v(?P<version>\d+) provider=(?P<provider>\S+) "
                    r"(?P<settings>.*?) test_accuracy=.*?probe max\|Δ\|=(?P<probe>\S+) "
                    r"\(tolerance (?P<tolerance>[^)]+)\).*\((?P<seconds>[\d.]+)s with warm-up")
WARMED = re.compile(r"batcher (?P<name>\S+) v(?P<version>\d+): max_batch=(?P<max_batch>\d+) .*"
                    r"warmed (?P<kind>padded buckets|batch 1) in (?P<seconds>[\d.]+)s")
SKIPPED = re.compile(r"skipping model (?P<name>\S+) v(?P<version>\d+) \([^)]*\): (?P<why>.*)")


def version_folders(kit: Kit, names: list[str]) -> dict[str, Path]:
    """arch -> its newest exported version folder, for the archs that have one."""
    out = {}
    for arch in names:
        report = newest_report(kit.work / "train" / "models" / arch)
        if report is not None:
            out[arch] = Path(report["folder"])
    return out


def expected_names(folders: dict[str, Path]) -> set[str]:
    """What the server should serve: each arch, and "<arch>:<variant>" for each variant file."""
    import model_contract as mc
    return {mc.served_name(arch, variant) for arch, folder in folders.items()
            for variant in (None, *mc.VARIANTS)
            if (folder / (mc.variant_file(variant) if variant else mc.MODEL_FILE)).is_file()}


def start(kit: Kit, folders: dict[str, Path], *flags: str):
    """bench.serve's ServerProcess: `python -m server --port 0 --log-format json` over a folder
    holding `folders`, HTTP and metrics off; returns it once it listens (SystemExit if not)."""
    from bench.serve import ServerProcess

    extra = ["--max-batch", str(kit.plan.max_batch), "--max-queue-delay-ms", "2",
             "--poll-seconds", "0", "--http-port", "0", *flags]
    server = ServerProcess(folders, kit.plan.device, extra)
    try:
        server.wait(kit.clock.timeout(300))
    except SystemExit:
        server.stop()
        raise
    return server


def parsed_log(lines) -> dict[str, dict]:
    """name -> what the server logged about it: loaded (provider, settings, probe, tolerance,
    seconds), warmed (kind, seconds) or skipped (why)."""
    out: dict[str, dict] = {}
    for line in lines:
        try:
            message = json.loads(line).get("message", "")
        except (json.JSONDecodeError, AttributeError):
            continue
        for key, pattern in (("loaded", LOADED), ("warmed", WARMED), ("skipped", SKIPPED)):
            if m := pattern.search(message):
                out.setdefault(m["name"], {})[key] = m.groupdict()
    return out


def list_models(port: int) -> dict[str, dict]:
    """ListModels: served name -> its provider and probe max |Δ|."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=60)
    return {m.name: {"version": m.version, "provider": m.provider,
                     "probe_max_abs_diff": m.probe_max_abs_diff} for m in answer.models}


def serve(kit: Kit):
    """Start the server over every export; returns (checks, the running server or None)."""
    folders = version_folders(kit, kit.archs)
    if not folders:
        return [Check("serve", "server", FAILED, "no exported model to serve")], None
    try:
        server = start(kit, folders)
    except SystemExit as e:
        return [Check("serve", "server", FAILED, str(e).splitlines()[0] + ": "
                      + " | ".join(str(e).splitlines()[-3:]))], None
    served, logged = list_models(server.port), parsed_log(list(server.log))
    return [_all_loaded(kit, expected_names(folders), served, logged),
            *(_model(kit, name, logged.get(name, {})) for name in sorted(served))], server


def _all_loaded(kit: Kit, expected: set[str], served: dict, logged: dict) -> Check:
    provider = "CUDAExecutionProvider" if kit.plan.cuda else "CPUExecutionProvider"
    missing = sorted(expected - set(served))
    elsewhere = sorted(n for n, m in served.items() if m["provider"] != provider)
    why = "; ".join(f"{n}: {logged.get(n, {}).get('skipped', {}).get('why', 'not in the log')}"
                    for n in missing)
    return Check("serve", f"server --device {kit.plan.device}: every model and variant loaded",
                 passed_if(not missing and not elsewhere),
                 f"{len(served)} of {len(expected)} served on {provider}"
                 + (f"; missing {why}" if missing else "")
                 + (f"; on another provider: {', '.join(elsewhere)}" if elsewhere else ""),
                 {"expected": sorted(expected), "served": served})


def _model(kit: Kit, name: str, logged: dict) -> Check:
    """One served model's probe, CUDA options and bucket warm-up, as its log lines say."""
    loaded, warmed = logged.get("loaded", {}), logged.get("warmed", {})
    figures = {"provider": loaded.get("provider"), "settings": loaded.get("settings"),
               "probe_max_abs_diff": _number(loaded.get("probe")),
               "tolerance": _number(loaded.get("tolerance")),
               "load_seconds": _number(loaded.get("seconds")), "warm_up": warmed.get("kind"),
               "warm_up_seconds": _number(warmed.get("seconds"))}
    line = (f"probe max |Δ| {loaded.get('probe')} (tolerance {loaded.get('tolerance')}), "
            f"warmed {warmed.get('kind')} in {warmed.get('seconds')} s; {loaded.get('settings')}")
    if not kit.plan.cuda:
        return Check("serve", f"probe and warm-up on CUDA: {name}", NO_CUDA,
                     "rehearsed on the CPU: " + line, figures)
    ok = (warmed.get("kind") == "padded buckets" and "use_tf32=0" in loaded.get("settings", ""))
    return Check("serve", f"probe and warm-up on CUDA: {name}", passed_if(ok), line, figures)


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def serve_tf32(kit: Kit) -> list[Check]:
    """A server with --cuda-tf32 over the benchmark models: each probe with TF32 on, held to
    the wider tolerance the log names."""
    from execution_providers import TF32_PROBE_TOLERANCE

    if not kit.plan.cuda:
        return [Check("tf32", "server --cuda-tf32", NO_CUDA)]
    folders = version_folders(kit, kit.bench_models)
    try:
        server = start(kit, folders, "--cuda-tf32")
    except SystemExit as e:
        return [Check("tf32", "server --cuda-tf32", FAILED, str(e).splitlines()[0])]
    try:
        served, logged = list_models(server.port), parsed_log(list(server.log))
    finally:
        server.stop()
    checks = []
    for name in sorted(expected_names(folders)):
        loaded = logged.get(name, {}).get("loaded", {})
        ok = name in served and "use_tf32=1" in loaded.get("settings", "")
        fp32 = ":" not in name
        ok = ok and (not fp32 or _number(loaded.get("tolerance")) == TF32_PROBE_TOLERANCE)
        checks.append(Check("tf32", f"server --cuda-tf32: {name}", passed_if(ok),
                            f"probe max |Δ| {loaded.get('probe')} (tolerance "
                            f"{loaded.get('tolerance')})" if loaded else
                            logged.get(name, {}).get("skipped", {}).get("why", "not loaded"),
                            {"probe_max_abs_diff": _number(loaded.get("probe")),
                             "tolerance": _number(loaded.get("tolerance"))}))
    return checks or [Check("tf32", "server --cuda-tf32", FAILED, "nothing to serve")]
