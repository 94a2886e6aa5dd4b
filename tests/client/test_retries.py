"""Refusals that say "try again" are retried: six `predict.py folder/` runs at once against one
real `python -m server` whose queue holds one request (4 images) all finish, every line printed,
although the server refused many of their requests with RESOURCE_EXHAUSTED and a pushback
(client/retries.py; without the retries 5 of the 6 runs failed)."""

from __future__ import annotations

from concurrent import futures

from harness.process import ServerProcess
from tests.client.predict_cli import predict, requests_by_code, sample_copies

RUNS = 6
IMAGES = 200  # per run: 50 requests of 4, so the runs overlap however they are scheduled


def test_concurrent_runs_against_a_full_queue_all_finish(models_dir, tmp_path):
    folder = tmp_path / "many"
    files = sample_copies(folder, IMAGES)
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                       "--max-images-per-request", "4", "--max-batch", "4",
                       "--max-queue-images", "4", metrics=True) as server:
        address = f"127.0.0.1:{server.wait_for_port()}"
        with futures.ThreadPoolExecutor(RUNS) as pool:
            runs = list(pool.map(lambda _: predict(str(folder), "--model", "lenet_bn",
                                                   "--server", address), range(RUNS)))
        codes = requests_by_code(server.metrics_port)
    assert [run.returncode for run in runs] == [0] * RUNS, [run.stderr for run in runs]
    for run in runs:
        assert [line.split(":")[0] for line in run.stdout.splitlines()] == list(map(str, files))
        assert run.stderr == ""
    assert codes.get("OK") == RUNS * IMAGES / 4
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes  # the retries had work to do
