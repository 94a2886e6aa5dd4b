"""The shutdown timings add up, read from the manifests: the kubelet must not SIGKILL a pod
before its drain is over. In order: preStop sleeps (endpoints and DNS drop the pod meanwhile),
SIGTERM starts the drain (--grace seconds for the requests in flight); each worker's watchdog
exits 0.9 s after that whatever is stuck, and the workers' parent kills any worker still running
STOP_MARGIN seconds after --grace, so the process is gone by --grace + STOP_MARGIN. The pod's
terminationGracePeriodSeconds, counted from the start of preStop, must cover all of it with
MARGIN to spare. test_command_lines.py measures the part after SIGTERM."""

from __future__ import annotations

import pytest

from server.workers.supervisor import STOP_MARGIN
from tests.deploy.manifests import served

MARGIN = 5.0  # the kubelet's own delays, the processes' exit, a loaded node
PROPAGATION = 5  # kube-proxy, ingresses and CoreDNS (5 s TTL) see a terminating pod go


@pytest.mark.parametrize("where", served())
def test_the_grace_period_outlasts_prestop_and_the_drain(where):
    s = served()[where]
    pre_stop = s.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= PROPAGATION, "new work would still arrive after SIGTERM"
    needed = pre_stop + s.args.grace + STOP_MARGIN + MARGIN
    assert s.termination_grace > needed, (
        f"{where}: terminationGracePeriodSeconds {s.termination_grace} <= preStop {pre_stop} + "
        f"--grace {s.args.grace:g} + the workers' stop margin {STOP_MARGIN:g} + margin "
        f"{MARGIN:g}")
