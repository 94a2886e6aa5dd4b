"""bench/neighbours.py: the CPU other processes used during a cell is counted, and the server's
own (its whole process tree) is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.neighbours import Neighbours, tree_seconds
from harness.wait import until


def test_a_busy_process_beside_the_server_counts_and_the_servers_own_tree_does_not():
    idle = subprocess.Popen(["sleep", "60"])
    # the work is done by a child of the process started: a tree, as a --workers server is
    busy = subprocess.Popen(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' & wait"],
                            start_new_session=True)
    try:
        until(lambda: tree_seconds(busy.pid) > 0.05, 30, "the busy process running")
        started = time.monotonic()
        beside, as_server = Neighbours(idle.pid), Neighbours(busy.pid)
        before = tree_seconds(busy.pid)
        until(lambda: tree_seconds(busy.pid) - before > 0.5, 30, "half a CPU second of work")
        used = tree_seconds(busy.pid) - before
        others, own = beside.cores(), as_server.cores()
        wall = time.monotonic() - started
        assert others * wall >= 0.8 * used  # counted when it is not the server ...
        assert own * wall <= others * wall - 0.7 * used  # ... and not when it is
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        busy.wait()
        idle.kill()
        idle.wait()
