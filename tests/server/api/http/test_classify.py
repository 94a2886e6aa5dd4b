"""The friendly API: /v1/models and /v1/models/{m}:classify with files (multipart/form-data, as
browsers and curl -F send them) or a raw image body; answers equal fmnist.v1's over gRPC; and
/openapi.json describes every route the server has."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from fmnist.v1 import classifier_pb2 as pb

from tests.server.api.http.web import call, multipart, sample_png
from tests.server.conftest import TEST_LIMITS
from tests.serving_fixtures import SAMPLES

MODEL = "lenet_bn"
NAMES = ("coat", "bag", "dress")


def grpc_classify(stub, files: list[bytes], top_k: int,
                  inversion=pb.INVERSION_AUTO) -> list[list[tuple[int, str, float]]]:
    response = stub.Classify(pb.ClassifyRequest(model=MODEL, images=[pb.Image(encoded=f)
                                                                     for f in files],
                                                top_k=top_k, inversion=inversion), timeout=30)
    return [[(p.class_id, p.label, p.probability) for p in c.predictions]
            for c in response.classifications]


def http_classes(answer) -> list[list[tuple[int, str, float]]]:
    assert answer.status == 200, answer.body
    return [[(p["class_id"], p["label"], p["probability"]) for p in c["predictions"]]
            for c in answer.json["classifications"]]


def test_files_in_a_form_are_classified_in_order_as_grpc_classifies_them(base, stub):
    files = [sample_png(n) for n in NAMES]
    body, headers = multipart([("image", f"{n}.png", f) for n, f in zip(NAMES, files)]
                              + [("top_k", None, b"3")])
    answer = call(f"{base}/v1/models/{MODEL}:classify", body, headers)
    assert (answer.json["model"], answer.json["version"]) == (MODEL, 1)
    assert http_classes(answer) == grpc_classify(stub, files, 3)
    assert answer.headers["Server-Timing"].startswith("core;dur=")


def test_a_raw_image_body_with_query_parameters(base, stub):
    coat = sample_png("coat")
    answer = call(f"{base}/v1/models/{MODEL}/versions/1:classify?top_k=10&inversion=always",
                  coat, {"Content-Type": "image/png"})
    assert http_classes(answer) == grpc_classify(stub, [coat], 10, pb.INVERSION_ALWAYS)
    assert http_classes(answer) != http_classes(call(
        f"{base}/v1/models/{MODEL}:classify?top_k=10&inversion=never", coat))


def test_form_fields_override_the_query(base, stub):
    body, headers = multipart([("file", "coat.png", sample_png("coat")),
                               ("top_k", None, b"2"), ("inversion", None, b"never")])
    answer = call(f"{base}/v1/models/{MODEL}:classify?top_k=7", body, headers)
    assert http_classes(answer) == grpc_classify(stub, [sample_png("coat")], 2,
                                                 pb.INVERSION_NEVER)


@pytest.mark.parametrize("parts, query, status, words", [
    ([("image", "coat.png", sample_png("coat")), ("image", "notes.txt", b"shopping list")], "",
     400, ("image 1: not a PNG, JPEG, BMP, GIF or WebP image (first bytes b'shopping') (file "
           "'notes.txt')")),
    ([("image", "coat.png", sample_png("coat"))], "?top_k=many", 400,
     "top_k must be an integer from 1 to 10, got 'many'"),
    ([("image", "coat.png", sample_png("coat"))], "?top_k=11", 400, "top_k must be 0..10"),
    ([("image", "coat.png", sample_png("coat"))], "?inversion=sideways", 400,
     "inversion must be one of auto, always, never, got 'sideways'"),
    ([("top_k", None, b"3")], "", 400, "no images in the request"),
    ([("image", f"{i}.png", sample_png("coat")) for i in range(TEST_LIMITS.max_images_per_request
                                                               + 1)], "", 400,
     "17 images is over the limit of 16 per request; split them"),
], ids=["text file", "top_k word", "top_k 11", "inversion", "no images", "too many"])
def test_bad_classify_requests_say_what_to_fix(base, parts, query, status, words):
    body, headers = multipart(parts)
    answer = call(f"{base}/v1/models/{MODEL}:classify{query}", body, headers)
    assert answer.status == status and words in answer.error
    assert call(f"{base}/v1/models/{MODEL}:classify", sample_png("bag")).status == 200


def test_an_unknown_model_names_the_served_ones(base):
    answer = call(f"{base}/v1/models/resnet999:classify", sample_png("coat"))
    assert answer.status == 404
    assert answer.error == ("model 'resnet999' is not served; served models: lenet (versions 1), "
                            "lenet_bn (versions 1)")


def test_list_models_is_grpcs_list_models(base, stub):
    answer = call(f"{base}/v1/models").json
    grpc_models = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert [(m["name"], m["version"], m["provider"], m["test_accuracy"], m["labels"])
            for m in answer["models"]] == [
        (m.name, m.version, m.provider, m.test_accuracy, list(m.labels)) for m in grpc_models]
    assert answer["limits"]["max_images_per_request"] == TEST_LIMITS.max_images_per_request
    assert answer["limits"]["max_message_bytes"] == TEST_LIMITS.max_message_bytes
    assert answer["image_formats"] == ["PNG", "JPEG", "BMP", "GIF", "WEBP"]


def test_openapi_describes_every_route_the_server_has(http_server, base):
    answer = call(f"{base}/openapi.json")
    assert answer.status == 200
    description = answer.json
    assert description["openapi"].startswith("3.1")
    app = http_server._http_service.app
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and not r.resource.canonical.startswith("/static")
              and r.resource.canonical not in ("/", "/openapi.json")}
    described = {(method, path) for path, operations in description["paths"].items()
                 for method in operations}
    assert routes == described


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_as_the_readme_shows_it(base):
    """The README's lines: a form upload and a raw body, by curl itself."""
    form = subprocess.run(["curl", "-sS", "-F", f"image=@{SAMPLES / 'coat.png'}",
                           f"{base}/v1/models/{MODEL}:classify?top_k=3"],
                          capture_output=True, text=True, timeout=60, check=True)
    raw = subprocess.run(["curl", "-sS", "--data-binary", f"@{SAMPLES / 'coat.png'}",
                          f"{base}/v1/models/{MODEL}:classify"],
                         capture_output=True, text=True, timeout=60, check=True)
    top3 = json.loads(form.stdout)["classifications"][0]["predictions"]
    top1 = json.loads(raw.stdout)["classifications"][0]["predictions"]
    assert len(top3) == 3 and top1 == top3[:1]
