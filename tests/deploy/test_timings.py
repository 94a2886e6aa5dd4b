"""The shutdown timings add up, read from the manifests: the kubelet must not SIGKILL a pod
before its drain is over. In order: preStop sleeps (endpoints and DNS drop the pod meanwhile),
SIGTERM starts the drain (--grace seconds for requests in flight), the server's watchdog exits
at most WATCHDOG seconds after that, and terminationGracePeriodSeconds, counted from the start
of preStop, must cover all of it with MARGIN to spare.
test_command_lines.py measures the second half: SIGTERM to exit within --grace + WATCHDOG."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import served

WATCHDOG = 1.0  # server/cli.py: exits --grace + 0.9 s after the signal, whatever is stuck
MARGIN = 5.0  # the kubelet's own delays, the process's exit, a loaded node
PROPAGATION = 5  # kube-proxy, ingresses and CoreDNS (5 s TTL) see a terminating pod go


@pytest.mark.parametrize("where", served())
def test_the_grace_period_outlasts_prestop_and_the_drain(where):
    s = served()[where]
    pre_stop = s.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= PROPAGATION, "new work still arrives after SIGTERM"
    needed = pre_stop + s.args.grace + WATCHDOG + MARGIN
    assert s.termination_grace > needed, (
        f"{where}: terminationGracePeriodSeconds {s.termination_grace} <= preStop {pre_stop} + "
        f"--grace {s.args.grace:g} + watchdog {WATCHDOG:g} + margin {MARGIN:g}")

