"""`python -m trainer` run as a user runs it, and readers for what a run leaves behind.

Shared by the test files that observe the command line's flags, so each of them reads the log,
the checkpoints and the metrics file the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from tests.conftest import REPO

TRAINER = (sys.executable, "-m", "trainer")
TWO_RANKS = (str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2")
RANK_ABORT = "terminate called without an active exception"
# "lenet epoch 2/10: ..." for a whole epoch, "lenet epoch 3/10, partial (1 of 256 steps): ..."
EPOCH_LINE = re.compile(r"trainer: (\w+) epoch (\d+)/(\d+)(?:, partial \((\d+) of (\d+) steps\))?:")


def trainer_env(env: dict | None = None) -> dict:
    """This process's environment, the repository importable, one intra-op thread (as
    conftest.py explains) unless OMP_NUM_THREADS is set, a crash's Python stacks printed
    (run_two_ranks), and `env` on top."""
    return {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(REPO),
            "PYTHONFAULTHANDLER": "1", **(env or {})}


def run_trainer(*args: str, launcher=TRAINER, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer to its end; `env` is added to this process's environment."""
    full_env = trainer_env(env)
    return subprocess.run([*launcher, *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_two_ranks(*args: str, artifacts: Path, resumed: bool = False
                  ) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS` to its end: two gloo ranks on the CPU.

    Rank 1 aborted with RANK_ABORT twice in CI, in two of these tests, and never in ~150 runs
    here, loaded or not; where it comes from is not known (a std::thread left joinable, or a
    thread of torch's taking the GIL while the interpreter exits). Such a launch is reported as
    a warning, with the stacks PYTHONFAULTHANDLER printed, and run once more: afresh (its
    `artifacts` removed) or, `resumed`, from the checkpoint it left. Any other failure, and
    that abort twice, are the test's."""
    result = run_trainer(*args, launcher=TWO_RANKS)
    if result.returncode != 0 and RANK_ABORT in result.stderr:
        warnings.warn(f"a rank aborted ({RANK_ABORT}); running the launch once more: "
                      f"{result.stderr[-6000:]}")
        if not resumed:
            shutil.rmtree(artifacts, ignore_errors=True)
        result = run_trainer(*args, launcher=TWO_RANKS)
    return result


def epoch_lines(log: str, arch: str) -> list[tuple[int, int, int | None, int | None]]:
    """(epoch, of epochs, steps taken, steps per epoch) per epoch line of `arch` in `log`; the
    steps are None for a whole epoch."""
    out = []
    for m in EPOCH_LINE.finditer(log):
        if m.group(1) == arch:
            steps = (int(m.group(4)), int(m.group(5))) if m.group(4) else (None, None)
            out.append((int(m.group(2)), int(m.group(3)), *steps))
    return out


def metrics_records(artifacts: Path, arch: str) -> list[dict]:
    """The records of the one metrics file (runs/<arch>/<run id>.jsonl) `arch` has."""
    [path] = (Path(artifacts) / "runs" / arch).glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run's one `error:` line; fails when there are none, several, or a traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    return line
