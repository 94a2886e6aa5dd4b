"""What else used the CPU while a cell was measured: every process's CPU time (from /proc/stat)
but the server measured (its process tree) and this benchmark with its load generator (h2load, a
child that has exited by then), in cores.

`make bench-peer` once printed 1,008 img/s for a server that answered 3,356 measured alone with
the same h2load command. Idle servers beside the one measured were suspected and measured: they
used at most 0.02 cores during another's cell (bench/peer.py's servers, 32 callers). What does
skew a cell is work the benchmark does not see: a test suite, a build, a backlog. A cell now
carries `others_cores`, and the tables flag those measured beside more than NOISY cores.

    beside = Neighbours(server.proc.pid)
    cell = h2load(...)
    cell["others_cores"] = beside.cores()
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from harness.process import children

NOISY = 0.15  # cores used by others during a cell above which its figures are suspect
_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent busy since boot (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


def tree_seconds(pid: int) -> float:
    """CPU seconds used by `pid` and its descendants alive now."""
    total, pending = 0.0, [pid]
    while pending:
        p = pending.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += (int(stat[11]) + int(stat[12])) / _TICK
        pending += children(p)
    return total


def own_seconds() -> float:
    """CPU seconds of this process and its children that have exited (h2load)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


class Neighbours:
    """Started before a cell; `cores()` after it: the CPU others used meanwhile, in cores."""

    def __init__(self, server_pid: int):
        self.pid = server_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        return (time.monotonic(), machine_busy_seconds(), tree_seconds(self.pid), own_seconds())

    def cores(self) -> float:
        now = self._sample()
        wall, busy, server, own = (b - a for a, b in zip(self._start, now))
        return max(0.0, busy - server - own) / wall if wall > 0 else 0.0


def flag(cell: dict) -> str:
    """" (beside 0.4 other cores)" for a cell measured beside others' work, else ""."""
    cores = cell.get("others_cores")
    return f" (beside {cores:.2f} other cores: suspect)" if cores and cores > NOISY else ""
