"""Three `python -m server` replicas on three hosts (network namespaces, harness/fleet.py), driven
from this host by one gRPC channel set up as for a Kubernetes headless Service
(client/balancing.py): the small version of `make fleet` (scripts/fleet.py). Every scenario
must lose no call; per-replica counts come from each replica's /metrics."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness import netns, scenarios
from harness.fleet import Fleet
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

CALLS = 1500

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or bool(netns.missing_tools()),
                       reason="network namespaces need root and iproute2 (ip)"),
]


@pytest.fixture(scope="module")
def fleet(models_dir):  # noqa: F811
    folder = Path(tempfile.mkdtemp(prefix="fleet-models-"))
    shutil.copytree(models_dir / scenarios.MODEL, folder / scenarios.MODEL)
    try:
        with Fleet(folder, size=3, server_args=("--poll-seconds", "0.2",
                                                "--unready-while-loading")) as running:
            yield running
    finally:
        shutil.rmtree(folder)


def assert_no_failure(report: scenarios.Report) -> None:
    assert not report.summary.failures, "\n".join(report.lines())
    assert len(report.summary.calls) == CALLS


def test_steady_load_spreads_evenly_over_the_replicas(fleet):
    report = scenarios.steady(fleet, CALLS)
    assert_no_failure(report)
    mean = sum(report.served) / len(report.served)
    assert all(abs(n - mean) <= 0.25 * mean for n in report.served), report.lines()
    assert sum(report.served) == CALLS  # each call answered once, by one replica


def test_a_replica_killed_mid_load_loses_no_call(fleet):
    report = scenarios.sigkill(fleet, CALLS)
    assert_no_failure(report)
    assert all(n > 0 for n in report.served), report.lines()
    assert fleet.replicas[0].starts == 2 and fleet.replicas[0].running  # started again


@pytest.mark.parametrize("victim", [1, 2])
def test_a_replica_stopped_mid_load_drains_without_losing_a_call(fleet, victim):
    """SIGTERM: the replica turns new calls away in a way the clients' retry policy replays,
    finishes those in flight, exits 0."""
    report = scenarios.sigterm(fleet, CALLS, victim)
    assert_no_failure(report)
    assert f"replica {victim} exited 0" in report.notes[0]


def test_a_rolling_model_update_answers_every_call_from_the_old_or_new_version(fleet):
    report = scenarios.rolling_update(fleet, CALLS)
    assert not report.summary.failures, "\n".join(report.lines())
    assert set(report.summary.versions) == {1, 2}, report.lines()
    assert report.switches == [1, 1, 1], report.lines()  # one "now serving v2" each
    assert report.old_after_switch == [0, 0, 0], report.lines()
    assert report.out_of_rotation == [True, True, True], report.lines()  # while each loaded
