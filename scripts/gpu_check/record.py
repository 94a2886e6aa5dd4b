"""What the kit found: one `Check` per thing it proved (or could not), with its figures.

A check's status is "passed", "failed", or "skipped: <why>" ("skipped: no CUDA" for what only a GPU
can show: the CPU rehearsal ran the same code up to that point). The record is written as
gpu-check.json and gpu-check.md after every step, so a run cut short still says how far it got.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASSED = "passed"
FAILED = "failed"
NO_CUDA = "skipped: no CUDA"
NO_TIME = "skipped: out of time"
JSON_FILE = "gpu-check.json"
MD_FILE = "gpu-check.md"


def skipped(why: str) -> str:
    return f"skipped: {why}"


def passed_if(ok: bool) -> str:
    return PASSED if ok else FAILED


@dataclass
class Check:
    step: str     # "preflight", "train", "resume", "torchrun", "export", "parity", "serve", ...
    name: str     # what was checked, e.g. "train resnet18"
    status: str   # PASSED, FAILED or "skipped: <why>"
    detail: str = ""  # one line: the figure that decided it, or why it failed or was skipped
    figures: dict = field(default_factory=dict)


class Record:
    """The run's checks and facts, and the two files they are written to."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.meta = meta      # device, plan, command, commit, start time
        self.info: dict = {}  # preflight facts: versions, GPU, CUDA provider, wheels
        self.checks: list[Check] = []
        self.started = time.monotonic()

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        print(f"[{check.step}] {check.name}: {check.status}"
              + (f" - {check.detail}" if check.detail else ""), flush=True)
        return check

    def extend(self, checks: list[Check]) -> None:
        for check in checks:
            self.add(check)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAILED]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            key = c.status if not c.status.startswith("skipped") else "skipped"
            out[key] = out.get(key, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"kit": {**self.meta, "seconds": round(time.monotonic() - self.started, 1)},
                "preflight": self.info, "summary": self.counts(),
                "failed": [f"{c.name}: {c.detail}" for c in self.failed()],
                "checks": [asdict(c) for c in self.checks]}

    def write(self) -> Path:
        """gpu-check.json and gpu-check.md in `out`, each replaced whole (written aside, then
        renamed), so a reader never sees half a file."""
        from gpu_check.report import markdown  # here: record.py stays importable on its own

        self.out.mkdir(parents=True, exist_ok=True)
        data = self.as_dict()
        _write_atomic(self.out / JSON_FILE, json.dumps(data, indent=2, default=_plain) + "\n")
        _write_atomic(self.out / MD_FILE, markdown(data))
        return self.out / JSON_FILE


def _plain(value):
    """JSON for what json does not know: paths and numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def say(line: str) -> None:
    """A progress line on stderr (the check lines go to stdout)."""
    print(line, file=sys.stderr, flush=True)
