"""fmnist_saturation, the gauge the autoscalers read (deploy/kubernetes/hpa.yaml, deploy/kserve/):
a real server under 1, 8 and 64 closed-loop callers sees it rise; the server-wide series has no
labels and is the most saturated version's; the --workers parent takes the workers' mean, not
their sum. The model is a fake whose batches take 20 ms + 1 ms an image, standing in for a model
that is the server's limit (resnet18 on a CPU), so the levels are the batcher's and not the
test client's."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from harness.process import ServerProcess, scrape
from harness.wait import until
from server.app import create_server
from server.batching.batcher import BatchPolicy
from server.dataplane.types import Batching, Limits
from server.metrics.summing import MetricsSum
from tests.server.fakes import fake_model
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

IMAGE = pb.Image(raw=bytes(range(256)) * 3 + bytes(16))
SCRAPES = 20  # per level, one every WINDOW: the median of these is compared
MAX_CALLS = 5_000  # per caller: the load is bounded in count as well as in time
MAX_SECONDS = 120.0


class Load:
    """`callers` coroutines on a few grpc.aio channels, every one calling Classify again as soon
    as its answer comes (closed loop), until stopped, MAX_CALLS each or MAX_SECONDS."""

    def __init__(self, port: int, callers: int, model: str):
        self.port, self.callers, self.model = port, callers, model
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{self.port}",
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(min(self.callers, 4))]
        try:
            await asyncio.gather(*(self._caller(pb_grpc.ClassifierStub(channels[i % len(channels)]))
                                   for i in range(self.callers)))
        finally:
            for channel in channels:
                await channel.close()

    async def _caller(self, stub) -> None:
        request = pb.ClassifyRequest(model=self.model, images=[IMAGE])
        give_up = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_CALLS):
            if self._stop.is_set() or time.monotonic() > give_up:
                return
            try:
                await stub.Classify(request, timeout=30)
                self.answered += 1
            except grpc.RpcError as e:
                self.errors.append(e.code().name)
                return


def saturation(port: int) -> tuple[float, dict[tuple, float]]:
    """(the server-wide value, {(model, version): value}) from /metrics."""
    series = scrape(port)["fmnist_saturation"]
    unlabelled = [value for labels, value in series if not labels]
    assert len(unlabelled) == 1, series
    return unlabelled[0], {(labels["model"], labels["version"]): value
                           for labels, value in series if labels}


def level(port: int, metrics_port: int, callers: int, model: str) -> float:
    """The median server-wide saturation over SCRAPES scrapes a second apart (each a mean of
    its last second), under `callers` callers."""
    with Load(port, callers, model) as load:
        until(lambda: load.answered >= 10 * callers or load.errors, 120,
              f"{callers} callers getting answers")
        seen = []
        for _ in range(SCRAPES):
            server_wide, versions = saturation(metrics_port)
            assert server_wide == max(versions.values())  # the most saturated version's
            seen.append(server_wide)
            load._stop.wait(1.0)  # paces the scrapes; the load runs meanwhile
    assert not load.errors, load.errors
    return statistics.median(seen)


@pytest.mark.slow
def test_saturation_rises_with_the_callers():
    slow = fake_model("slow", 1, delay=0.02, delay_per_image=0.001)  # 21 ms for 1, 52 for 32
    server, port = create_server(
        models=[slow, fake_model("idle", 1)], port=0, metrics_port=0,
        batching=Batching(BatchPolicy(max_batch=32, max_queue_images=256)),
        limits=Limits(max_in_flight=512))
    server.start()
    try:
        metrics = server.metrics.port
        levels = {callers: level(port, metrics, callers, "slow") for callers in (1, 8, 64)}
        print(f"median fmnist_saturation by callers: {levels}")
        assert levels[1] < levels[8] < levels[64], levels
        assert levels[1] < 1.0 < levels[64], levels  # 64 callers: two full batches of work
        until(lambda: saturation(metrics)[0] < 0.1, 30, "idle again once the callers stop")
        assert saturation(metrics)[1][("idle", "1")] < 0.1
    finally:
        server.stop(0)


@pytest.mark.slow
def test_python_m_server_exports_the_server_wide_series_and_one_per_version(models_dir):  # noqa: F811
    with ServerProcess("--models-dir", str(models_dir), "--port", "0", "--device", "cpu",
                       metrics=True) as server:
        server.wait_for_port()
        server_wide, versions = until(lambda: saturation(server.metrics_port), 30)
        assert set(versions) == {("lenet_bn", "1"), ("lenet", "1")}
        assert server_wide == max(versions.values()) < 1.0  # idle
        text = scrape_text(server.metrics_port)
        assert "# HELP fmnist_saturation How long new work waits now" in text
        assert "_created" not in text  # prometheus_client's *_created series are off


def scrape_text(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def worker_text(server: float, version: float) -> str:
    return ("# HELP fmnist_saturation s\n# TYPE fmnist_saturation gauge\n"
            f"fmnist_saturation {server}\n"
            f'fmnist_saturation{{model="m",version="1"}} {version}\n')


def test_the_workers_parent_takes_the_mean_saturation_not_the_sum():
    total = MetricsSum()
    total.update(1, worker_text(0.5, 0.25))
    total.update(2, worker_text(1.5, 0.75))
    samples = {tuple(sorted(s.labels.items())): s.value for f in total.families()
               for s in f.samples if s.name == "fmnist_saturation"}
    assert samples == {(): 1.0, (("model", "m"), ("version", "1")): 0.5}
    total.retire(2)  # a gauge leaves with its worker
    samples = {tuple(sorted(s.labels.items())): s.value for f in total.families()
               for s in f.samples if s.name == "fmnist_saturation"}
    assert samples == {(): 0.5, (("model", "m"), ("version", "1")): 0.25}
