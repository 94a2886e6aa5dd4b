"""How many cores this process may use, and what --workers, --intra-op-threads and
--decode-threads become on them.

Usable cores are the CPUs of the process's affinity mask (taskset, a cpuset: os.sched_getaffinity)
capped by its cgroup's CPU quota, rounded up (cgroup v2 cpu.max, v1 cpu.cfs_quota_us /
cpu.cfs_period_us; the smallest along the process's cgroup and its ancestors). A pod limited to 2
CPUs on a 64-core node has 2 usable cores: os.cpu_count() would say 64, and onnxruntime's default
of one thread per core would start 64 per model, which the quota then throttles.

Each of N workers gets usable cores / N (at least 1) onnxruntime intra-op threads and as many
decode threads, unless --intra-op-threads / --decode-threads say otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Cores:
    affinity: int  # CPUs this process may run on
    quota: float | None  # CPUs the cgroup quota allows; None: no quota

    @property
    def usable(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota)))

    def __str__(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        return f"{self.usable} usable core(s) (CPU affinity {self.affinity}, cgroup quota {quota})"


@dataclass(frozen=True)
class Plan:
    """What the flags come to on these cores."""

    cores: Cores
    workers: int
    intra_op_threads: int  # per worker
    decode_threads: int  # per worker

    def __str__(self) -> str:
        return (f"{self.cores}: {self.workers} worker(s), each with {self.intra_op_threads} "
                f"onnxruntime intra-op thread(s) and {self.decode_threads} decode thread(s)")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> Cores:
    """The affinity mask and the cgroup quota of this process (`cgroup_root`: where the cgroup
    file systems are mounted; `membership`: /proc/self/cgroup)."""
    quotas = [q for folder in _cgroup_folders(cgroup_root, membership)
              for q in (_v2_quota(folder), _v1_quota(folder)) if q is not None]
    return Cores(len(os.sched_getaffinity(0)), min(quotas) if quotas else None)


def plan(args: argparse.Namespace, cores: Cores | None = None) -> Plan:
    """--workers ("auto" or a count), --intra-op-threads and --decode-threads (0: a worker's share
    of the usable cores) on `cores` (default: this process's)."""
    cores = cores or usable_cores()
    workers = cores.usable if args.workers == "auto" else args.workers
    share = max(1, cores.usable // workers)
    return Plan(cores, workers, args.intra_op_threads or share, args.decode_threads or share)


def parse_workers(text: str) -> int | str:
    """--workers: "auto" or a positive count."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count or 'auto', got {text!r}")
    return value


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """The cgroup folders whose CPU limits apply to this process: for each hierarchy that
    controls the CPU (v2's single one, v1's "cpu" one), its folder and every ancestor."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = ["0::/"]
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the root itself, or root/unified beside v1 ("hybrid")
            mounts = [root, root / "unified"]
        elif "cpu" in controllers.split(","):  # v1: mounted as e.g. cpu,cpuacct
            mounts = [root / controllers]
        else:
            continue
        parts = Path(path).parts[1:]
        folders += [mount.joinpath(*parts[:i]) for mount in mounts
                    for i in range(len(parts), -1, -1)]
    return folders


def _v2_quota(folder: Path) -> float | None:
    """cpu.max: "max 100000" (no quota) or "<quota_us> <period_us>"."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    """cpu.cfs_quota_us (-1: no quota) / cpu.cfs_period_us."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
