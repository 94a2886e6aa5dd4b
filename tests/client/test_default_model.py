"""Without --model the client asks for the model with the best accuracy it can be sure of: the
demo's densenet (0.9030 on 1,000 test images) loses to lenet_bn (0.9028 on 10,000). --list
notes the default and the models near chance (alexnet at 0.11), as --json does
(tests/model_copies.py makes the models; the page's side: tests/server/api/http/test_page_models.py)."""

from __future__ import annotations

import json

import pytest

from tests.client.predict_cli import predict, serving
from tests.model_copies import ranked_models
from tests.serving_fixtures import SAMPLES

BAG = str(SAMPLES / "bag.png")


@pytest.fixture(scope="module")
def ranked(models_dir, tmp_path_factory) -> str:
    with serving(ranked_models(models_dir, tmp_path_factory.mktemp("ranked") / "models")) as srv:
        yield f"127.0.0.1:{srv.port}"


def answer_of(*args: str) -> dict:
    out = predict(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_without_model_the_accuracy_measured_on_more_images_answers(ranked):
    answer = answer_of(BAG, "--server", ranked)
    assert (answer["model"], answer["near_chance"]) == ("lenet_bn", False)
    assert answer_of(BAG, "--model", "alexnet", "--server", ranked)["near_chance"] is True
    listing = answer_of("--list", "--server", ranked)
    assert listing["default"] == "lenet_bn"
    assert {m["name"]: m["near_chance"] for m in listing["models"]} == {
        "alexnet": True, "densenet": False, "lenet_bn": False}


def test_list_notes_the_default_and_the_models_near_chance(ranked):
    out = predict("--list", "--server", ranked)
    assert out.returncode == 0, out.stderr
    header, rule, *rows = out.stdout.splitlines()
    assert header.split()[-1] == "note"
    width = len(rule.split()[-1])
    notes = {row.split()[0]: row[-width:].strip() for row in rows}
    assert notes == {"alexnet": "near chance", "densenet": "-", "lenet_bn": "default"}
