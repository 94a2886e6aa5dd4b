"""server/core.py without gRPC: validation, limits, deadlines and cancellation, with fake runners."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from server.core import Core, ImageData, Limits
from server.errors import (Cancelled, DeadlineExceeded, InvalidImage, InvalidRequest, ModelNotFound,
                           Overloaded, Unavailable)
from tests.server.fakes import fake_model


def raw(value: int = 0) -> ImageData:
    return ImageData("raw", bytes([value]) * 784)


class Call:
    def __init__(self, remaining=None, active=True):
        self.remaining, self.active = remaining, active

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return self.active


@pytest.fixture
def core():
    return Core([fake_model("a", 1), fake_model("a", 3), fake_model("b", 2)],
                Limits(max_images_per_request=4))


def test_classify_returns_top_k_in_order(core):
    result = core.classify("a", 0, [raw(3), raw(7)], top_k=3)
    assert (result.model, result.version) == ("a", 3)  # version 0: the newest loaded
    first = result.classifications[0]
    assert [p.class_id for p in first[:1]] == [3] and len(first) == 3
    assert first[0].label == "Dress" and first[0].probability == pytest.approx(0.91)
    assert result.classifications[1][0].class_id == 7


def test_top_k_zero_means_one_and_over_ten_is_refused(core):
    assert len(core.classify("a", 0, [raw()], top_k=0).classifications[0]) == 1
    assert len(core.classify("a", 0, [raw()], top_k=10).classifications[0]) == 10
    with pytest.raises(InvalidRequest, match="top_k must be 0..10"):
        core.classify("a", 0, [raw()], top_k=11)


def test_model_and_version_lookup(core):
    assert core.classify("a", 1, [raw()]).version == 1
    served = r"'zzz' is not served; served models: a \(versions 1, 3\), b"
    with pytest.raises(ModelNotFound, match=served):
        core.classify("zzz", 0, [raw()])
    with pytest.raises(ModelNotFound, match="version 2 is not served"):
        core.classify("a", 2, [raw()])
    with pytest.raises(InvalidRequest, match="model is required"):
        core.classify("", 0, [raw()])


def test_image_count_limits(core):
    with pytest.raises(InvalidRequest, match="no images"):
        core.classify("a", 0, [])
    with pytest.raises(InvalidRequest, match="5 images is over the limit of 4"):
        core.classify("a", 0, [raw()] * 5)


def test_bad_image_names_its_index_and_nothing_runs():
    model = fake_model("a")
    core = Core([model], Limits())
    with pytest.raises(InvalidImage, match=r"^image 2: a raw image must be exactly 784 bytes") as e:
        core.classify("a", 0, [raw(), raw(), ImageData("raw", b"\0" * 10)])
    assert e.value.index == 2 and model.runner.runs == 0
    with pytest.raises(InvalidImage, match="image 0: no image data"):
        core.classify("a", 0, [ImageData("", b"")])
    with pytest.raises(InvalidRequest, match="inversion must be one of"):
        core.classify("a", 0, [raw()], inversion="upside-down")


def test_requests_beyond_max_in_flight_are_refused():
    model = fake_model("slow", delay=0.5)
    core = Core([model], Limits(max_in_flight=1))
    worker = threading.Thread(target=core.classify, args=("slow", 0, [raw()]))
    worker.start()
    assert model.runner.started.wait(10)
    with pytest.raises(Overloaded, match="limit of 1 requests in flight"):
        core.classify("slow", 0, [raw()])
    worker.join()
    assert core.in_flight == 0
    core.classify("slow", 0, [raw()])  # the slot is free again


def test_draining_refuses_new_requests(core):
    core.drain()
    with pytest.raises(Unavailable, match="shutting down"):
        core.classify("a", 0, [raw()])


def test_cancelled_request_stops_before_running():
    model = fake_model("a")
    core = Core([model])
    with pytest.raises(Cancelled):
        core.classify("a", 0, [raw()], call=Call(active=False))
    assert model.runner.runs == 0 and core.in_flight == 0


def test_deadline_passed_or_too_short_is_refused_before_running():
    model = fake_model("a", delay=0.05)
    core = Core([model])
    with pytest.raises(DeadlineExceeded):
        core.classify("a", 0, [raw()], call=Call(remaining=0.0))
    assert model.runner.runs == 0
    core.classify("a", 0, [raw()], call=Call(remaining=5.0))  # learns a run takes ~50 ms
    with pytest.raises(DeadlineExceeded, match="takes about"):
        core.classify("a", 0, [raw()], call=Call(remaining=0.001))
    assert model.runner.runs == 1


def test_list_models_reports_each_loaded_version():
    core = Core([fake_model("a", 1, provider="CUDAExecutionProvider", accuracy=0.9)])
    (view,) = core.list_models()
    assert (view.name, view.version, view.provider, view.test_accuracy) == (
        "a", 1, "CUDAExecutionProvider", 0.9)
    assert len(view.labels) == 10 and view.input_side == 28


def test_close_closes_every_runner(core):
    core.close()
    assert all(m.runner.closed for versions in core._models.values() for m in versions.values())


def test_result_probabilities_are_python_floats(core):
    p = core.classify("b", 0, [raw()]).classifications[0][0]
    assert isinstance(p.probability, float) and not isinstance(p.probability, np.floating)
