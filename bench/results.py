"""The one file format every benchmark writes, so `make report` can show them all side by side.

A benchmark run leaves `<artifacts>/bench/<name>.json` (a later run of the same benchmark replaces
it: the folder holds each benchmark's latest result). Schema, version 1:

    {
      "schema": 1,
      "bench": "train",                          # the file's name without .json
      "created": "2025-01-01T12:00:00+00:00",    # UTC, when the result was written
      "cpu": "Intel(R) Xeon(R) Platinum 8480+",  # the machine's CPU model ("unknown" if unreadable)
      "cpus": 2,                                 # logical CPUs this process may use
      "isa": ["amx_bf16", "avx2", "avx512f"],    # the CPU's vector/matrix ISA flags, sorted
      "rows": [ {...}, ... ],                    # one flat dict per measurement: str/number values
      ...                                        # what else the benchmark adds (settings, notes)
    }

Figures are what make numbers comparable across machines, hence the CPU and its ISA (bf16 and AMX
decide how fast training and inference run here). Row keys are the benchmark's own; two names are
shared so the report can plot any benchmark: `images_per_s` (throughput) with `p50_ms` and/or
`p99_ms` (latency per request). Rows that have both are drawn on the throughput-vs-latency plot.

    from bench import results
    results.write("serve", {"rows": [{"model": "resnet18", "batch": 1, "images_per_s": 380.0,
                                      "p50_ms": 2.6, "p99_ms": 3.1}]}, Path("artifacts"))
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 1
THROUGHPUT = "images_per_s"
LATENCIES = ("p50_ms", "p99_ms")
ADDED = ("schema", "bench", "created", "cpu", "cpus", "isa")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
# /proc/cpuinfo flags that name vector or matrix instruction sets (x86 "flags", Arm "Features").
_ISA = re.compile(r"(sse\S*|ssse3|avx\S*|amx\S*|fma\S*|f16c|asimd\S*|sve\S*|sme(?!p)\S*|bf16|i8mm)")


def bench_dir(artifacts: str | os.PathLike) -> Path:
    return Path(artifacts) / "bench"


def write(name: str, result: dict, artifacts: str | os.PathLike) -> Path:
    """Write `result` (which must hold `rows`) as `<artifacts>/bench/<name>.json`, with the CPU
    model, its ISA flags and a timestamp added; atomically (temp file, then rename), so the report
    never reads half a file. Returns the path written."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"benchmark name {name!r}: use lower-case letters, digits, '_', '-', '.'")
    clash = sorted(set(ADDED) & set(result))
    if clash:
        raise ValueError(f"result must not set {clash}: write() adds them")
    rows = result.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("result['rows'] must be a list of dicts, one per measurement")
    cpu, isa = cpu_info()
    document = {"schema": SCHEMA, "bench": name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "isa": isa, **result}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"  # NaN is not JSON: fail here
    path = bench_dir(artifacts) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def announce_machine(cores) -> tuple[float, float, float]:
    """Print the CPU, `cores` (server.workers.cores' account of them), the ISA flags and the load
    averages, as a serving benchmark starts; the load averages, to write beside the figures."""
    cpu, isa = cpu_info()
    load = os.getloadavg()
    print(f"CPU: {cpu}, {cores}; ISA: {' '.join(isa) or 'unknown'}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load)}")
    return load


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(CPU model name, sorted vector/matrix ISA flags) from /proc/cpuinfo; elsewhere the platform's
    processor string and no flags."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or "unknown", []
    fields = dict(_field(line) for line in text.splitlines() if ":" in line)
    model = fields.get("model name") or fields.get("Hardware") or platform.processor() or "unknown"
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    return model, sorted({f for f in flags if _ISA.fullmatch(f)})


def _field(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return key.strip(), value.strip()


def read_all(artifacts: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Every `<artifacts>/bench/*.json` in this format, by name, and one problem line for each file
    that is not (unreadable, not JSON, another schema), so a reader can say what it skipped."""
    found, problems = [], []
    for path in sorted(bench_dir(artifacts).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{path}: unreadable ({err})")
            continue
        if not (isinstance(doc, dict) and doc.get("schema") == SCHEMA
                and isinstance(doc.get("rows"), list)):
            problems.append(f"{path}: not a bench/results.py schema-{SCHEMA} file")
            continue
        found.append(doc)
    return found, problems
