"""server/process.py through `python -m server`: what the process sets for itself, observed from
inside the real server process by a sitecustomize module the test puts on its PYTHONPATH (the
only way to read the interpreter's own state without a debugging endpoint in the server). The
module writes what it saw to a JSON file when the server gets SIGUSR1, and at exit."""

from __future__ import annotations

import json
import os
import shutil
import signal

from harness.process import ServerProcess
from harness.wait import until
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

PROBE = '''
import atexit, gc, json, os, signal, sys, weakref
_sessions = []

def _count_sessions():
    import onnxruntime
    init = onnxruntime.InferenceSession.__init__
    def counted(self, *args, **kwargs):
        _sessions.append(weakref.ref(self))
        init(self, *args, **kwargs)
    onnxruntime.InferenceSession.__init__ = counted

def _report(*_):
    if "server" in " ".join(sys.argv):
        with open(os.environ["PROCESS_PROBE_OUT"], "w") as f:
            json.dump({"frozen": gc.get_freeze_count(), "young": sum(gc.get_count()),
                       "sessions": len(_sessions),
                       "sessions_alive": sum(r() is not None for r in _sessions)}, f)

_count_sessions()
signal.signal(signal.SIGUSR1, _report)
atexit.register(_report)
'''


def _probed(tmp_path, *args: str) -> tuple[ServerProcess, callable]:
    """A server with the probe, and a function that has it report now and returns the report."""
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "probe.json"
    path = os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))
    server = ServerProcess(*args, "--device", "cpu", "--port", "0",
                           env={"PYTHONPATH": path, "PROCESS_PROBE_OUT": str(out)})

    def report() -> dict:
        out.unlink(missing_ok=True)
        server.proc.send_signal(signal.SIGUSR1)
        until(out.exists, 10, "the probe's report")
        return until(lambda: out.read_text() and json.loads(out.read_text()), 10)
    return server, report


def test_the_objects_of_start_up_are_out_of_the_collectors_full_passes(models_dir,  # noqa: F811
                                                                     tmp_path):
    """Once it serves, the server's start-up objects are frozen (gc.freeze), so a full
    collection walks only what was made since instead of stopping the event loop ~25 ms."""
    server, report = _probed(tmp_path, "--models-dir", str(models_dir))
    with server:
        server.wait_for_port()
        seen = report()
    assert seen["frozen"] > 10_000, seen


def test_an_unloaded_version_is_freed_though_start_up_was_frozen(models_dir,  # noqa: F811
                                                                tmp_path):
    """Frozen objects are never collected as cycles: a version's session must be let go of once
    its folder is removed (red with OnnxRunner.close keeping it and a cycle through the runner),
    or each reload would leak a model."""
    served = tmp_path / "models"
    shutil.copytree(models_dir, served)
    server, report = _probed(tmp_path, "--models-dir", str(served), "--poll-seconds", "1")
    with server:
        server.wait_for_port()
        loaded = report()
        assert loaded["frozen"] > 10_000 and loaded["sessions_alive"] == loaded["sessions"] >= 2
        shutil.rmtree(served / "lenet")
        until(lambda: server.count("unloaded lenet"), 30, "lenet unloaded")
        after = report()
    assert after["sessions_alive"] == loaded["sessions_alive"] - 1, (loaded, after)
