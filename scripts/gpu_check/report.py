"""gpu-check.md: the record of gpu-check.json for people (the JSON holds every figure)."""

from __future__ import annotations

STEPS = (("preflight", "1. Preflight"), ("train", "2. Training"), ("resume", "2. --resume"),
         ("torchrun", "2. torchrun"), ("export", "3. Export"), ("parity", "3. Parity on CUDA"),
         ("tf32", "3-4. TF32 on"), ("serve", "4. Server"), ("bench", "4. In-process vs server"))


def table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A Markdown table; '|' inside a cell is escaped."""
    def cell(x) -> str:
        return "" if x is None else str(x).replace("|", "\\|").replace("\n", " ")
    return ["| " + " | ".join(cell(x) for x in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(x) for x in row) + " |" for row in rows)]


def markdown(data: dict) -> str:
    kit, info = data["kit"], data["preflight"]
    lines = [f"# make gpu-check on {kit['device']}", "",
             f"{kit['started']}, commit {kit['commit']}, {kit['seconds']:.0f} s of a "
             f"{kit['minutes']:g}-minute budget: `{kit['command']}`", "",
             "Summary: " + ", ".join(f"{n} {status}" for status, n in data["summary"].items()), ""]
    if kit["device"] == "cpu":
        lines += ["This is the CPU rehearsal: the same script with tiny budgets. Every "
                  "\"skipped: no CUDA\" below is a CUDA path it could not prove; nothing here "
                  "ran on a GPU.", ""]
    if data["failed"]:
        lines += ["Failed:", "", *(f"- {f}" for f in data["failed"]), ""]
    lines += _machine(info)
    for step, title in STEPS:
        checks = [c for c in data["checks"] if c["step"] == step]
        if checks:
            lines += [f"## {title}", "", *table(("check", "status", "detail"), [
                (c["name"], c["status"], c["detail"]) for c in checks]), ""]
    for part in (_training_table, _parity_table, _serving_table, _bench_table):
        lines += part(data["checks"])
    return "\n".join(lines) + "\n"


def _machine(info: dict) -> list[str]:
    gpu, cuda = info.get("gpu", {}), info.get("cuda_provider", {})
    rows = [("GPU", gpu.get("gpu", "none")), ("memory GiB", gpu.get("memory_gib")),
            ("driver", gpu.get("driver")), ("torch", gpu.get("torch")),
            ("torch CUDA / cuDNN", f"{gpu.get('torch_cuda')} / {gpu.get('cudnn')}"),
            ("onnxruntime", cuda.get("onnxruntime")),
            ("CUDA provider active", cuda.get("active")),
            ("CUDA provider options", cuda.get("options")),
            ("preload_dlls", cuda.get("preload_dlls")), ("CPU", info.get("cpu")),
            ("Python", info.get("python")), ("data", (info.get("data") or {}).get("source")),
            ("wheels installed", info.get("wheels"))]
    return ["## Machine", "", *table(("what", "value"), rows), ""]


def _training_table(checks: list[dict]) -> list[str]:
    rows = [(c["name"].split()[-1], f"{f['examples_per_s']:,.0f}",
             f"{f['d2l_gpu_examples_per_s']:,.0f}" if f["d2l_gpu_examples_per_s"] else "-",
             f"{f['ratio_to_d2l']:.2f}x" if f["ratio_to_d2l"] else "-", f["steps"],
             f["precision"])
            for c in checks if c["step"] == "train" and (f := c["figures"])]
    if not rows:
        return []
    return ["## Training speed beside d2l's GPU figures", "",
            *table(("arch", "examples/s", "d2l GPU examples/s", "ratio", "steps", "precision"),
                   rows), ""]


def _g(x) -> str:
    return "-" if x is None else f"{x:.2g}"


def _parity_table(checks: list[dict]) -> list[str]:
    rows = [(c["name"], f["provider"], f["images"], _g(f["max_abs_diff_probabilities"]),
             _g(f["probe_max_abs_diff"]), f"{f['tolerance']:g}", f"{f['top1_agreement']:.2%}")
            for c in checks if c["step"] in ("parity", "tf32") and "images" in (f := c["figures"])]
    if not rows:
        return []
    return ["## Parity against the CPU provider", "",
            *table(("check", "provider", "images", "max |Δ prob|", "probe max |Δ|", "tolerance",
                    "agreement"), rows), ""]


def _serving_table(checks: list[dict]) -> list[str]:
    rows = [(c["name"].split(": ", 1)[-1], f["provider"], _g(f["probe_max_abs_diff"]),
             f["tolerance"], f["warm_up"], f["warm_up_seconds"], f["load_seconds"])
            for c in checks if c["step"] == "serve" and "warm_up" in (f := c["figures"])]
    if not rows:
        return []
    return ["## Served models", "", *table(("model", "provider", "probe max |Δ|", "tolerance",
                                            "warm-up", "warm-up s", "load s"), rows), ""]


def _bench_table(checks: list[dict]) -> list[str]:
    rows = [(c["name"].removeprefix("bench "), cell, f"{v['images_per_s']:,.0f}",
             f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}")
            for c in checks if c["step"] == "bench" and "cells" in c["figures"]
            for cell, v in c["figures"]["cells"].items()]
    if not rows:
        return []
    return ["## In-process against the server", "",
            *table(("model", "cell", "img/s", "p50 ms", "p99 ms"), rows), ""]
