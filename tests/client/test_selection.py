"""--model-version and --variant pick what the server answers with: lenet_bn is served at
versions 1 and 2 here (version 2 a copy of 1), with no precision variants (a served variant:
tests/server/test_variants.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.client.predict_cli import one_line_error, predict, serving
from tests.serving_fixtures import SAMPLES

BAG = str(SAMPLES / "bag.png")


@pytest.fixture(scope="module")
def two_versions(models_dir, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("two-versions") / "models"
    shutil.copytree(models_dir, root)
    shutil.copytree(root / "lenet_bn" / "1", root / "lenet_bn" / "2")
    with serving(root, versions={"lenet_bn": {1, 2}}) as srv:
        yield f"127.0.0.1:{srv.port}"


def answered(*args: str) -> tuple[str, int]:
    out = predict(BAG, "--json", *args)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    return answer["model"], answer["version"]


def test_model_version_picks_the_version(two_versions):
    assert answered("--model", "lenet_bn", "--server", two_versions) == ("lenet_bn", 2)
    assert answered("--model", "lenet_bn", "--model-version", "1",
                    "--server", two_versions) == ("lenet_bn", 1)
    human = predict(BAG, "--model", "lenet_bn", "--model-version", "1", "--server", two_versions)
    assert human.stdout.rstrip().endswith("[lenet_bn v1]")
    one_line_error(predict(BAG, "--model", "lenet_bn", "--model-version", "3",
                           "--server", two_versions), 1, "NOT_FOUND", "3")


def test_model_version_must_be_a_version_number():
    out = predict(BAG, "--model-version", "-1")
    assert out.returncode == 2 and "--model-version" in out.stderr.splitlines()[-1]


def test_variant_asks_for_model_colon_variant(two_versions):
    listing = json.loads(predict("--list", "--json", "--server", two_versions).stdout)
    best = max(listing["models"], key=lambda m: m["test_accuracy"])["name"]
    for args, asked in ((("--model", "lenet", "--variant", "int8"), "lenet:int8"),
                        (("--variant", "fp16"), f"{best}:fp16"),
                        (("--model", "lenet:int8"), "lenet:int8"),
                        (("--model", "lenet:int8", "--variant", "int8"), "lenet:int8")):
        one_line_error(predict(BAG, *args, "--server", two_versions), 1, "NOT_FOUND",
                       f"'{asked}'" if "'" in asked else asked)


def test_variant_and_a_model_naming_another_variant_conflict(two_versions):
    one_line_error(predict(BAG, "--model", "lenet:fp16", "--variant", "int8",
                           "--server", two_versions), 2,
                   "--model lenet:fp16 is the fp16 variant but --variant asks for int8")
    out = predict(BAG, "--variant", "int4", "--server", two_versions)
    assert out.returncode == 2 and "--variant" in out.stderr.splitlines()[-1]
