"""The latest benchmark results (artifacts/bench/*.json, bench/results.py's format) as tables
and as the points of the throughput-vs-latency plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import results


@dataclass(frozen=True)
class Bench:
    name: str
    created: str
    machine: str               # "CPU model, N CPUs, ISA flags"
    settings: dict             # the document's other top-level keys (steps, threads, ...)
    columns: list[str]         # every row key, in order of first appearance
    rows: list[dict]


def read(artifacts: Path) -> tuple[list[Bench], list[str]]:
    """Every benchmark found, and a problem line per file that could not be used."""
    docs, problems = results.read_all(artifacts)
    return [_bench(doc) for doc in docs], problems


def _bench(doc: dict) -> Bench:
    rows = [r for r in doc["rows"] if isinstance(r, dict)]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    isa = ", ".join(doc.get("isa") or []) or "no ISA flags recorded"
    machine = f"{doc.get('cpu', 'unknown CPU')}, {doc.get('cpus', '?')} CPUs; ISA: {isa}"
    settings = {k: v for k, v in doc.items() if k not in (*results.ADDED, "rows")}
    return Bench(str(doc.get("bench")), str(doc.get("created", "?")), machine, settings, columns,
                 rows)


def plot_points(benches: list[Bench]) -> list[dict]:
    """Rows with a throughput and at least one latency figure, labelled by their own names:
    {"label", "images_per_s", "p50_ms", "p99_ms"}."""
    points = []
    for bench in benches:
        for row in bench.rows:
            latencies = {k: row.get(k) for k in results.LATENCIES}
            if _number(row.get(results.THROUGHPUT)) and any(map(_number, latencies.values())):
                points.append({"label": f"{bench.name}: {_label(row)}",
                               "images_per_s": row[results.THROUGHPUT],
                               **{k: v if _number(v) else None for k, v in latencies.items()}})
    return points


def _label(row: dict) -> str:
    """What names a row: its text values, and its whole numbers as key=value (batch=32)."""
    parts = [v if isinstance(v, str) else f"{k}={v}" for k, v in row.items()
             if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))]
    return " ".join(parts) or "(unnamed row)"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
