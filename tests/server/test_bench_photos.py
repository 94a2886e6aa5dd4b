"""bench/photos.py: test images as photos through the real server, against their raw pixels."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from bench.photos import render_photo
from server.dataplane.imagefile import decode_encoded
from tests.conftest import IDX_NAMES, write_idx
from tests.serving_fixtures import REPO, SAMPLES, run_cli
from trainer import data

N = 48


def test_a_photo_is_a_large_light_rgb_jpeg_that_decodes_back_to_the_pixels():
    pixels = np.asarray(Image.open(SAMPLES / "ankle_boot.png"))
    photo = render_photo(pixels, np.random.default_rng(1))
    image = Image.open(io.BytesIO(photo))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert 256 <= image.width == image.height <= 512
    corners = np.asarray(image)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() > 200  # light background
    back = decode_encoded(photo).astype(int)
    assert np.abs(back - pixels).mean() < 12  # JPEG and two resamplings, nothing more


def _accuracy(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray) -> float:
    [probabilities] = session.run(["probabilities"], {"image": images[:, None]})
    return float((probabilities.argmax(1) == labels).mean())


def short_bands(folder, fmnist_dir):
    """The fixture's training files, and test images whose class band is short (columns 12-16,
    no noise): raw, the models trained on long bands still find the row; as photos, the decoder
    crops to the band and enlarges it, so photo and raw answers differ and the test can tell
    which bytes reached the server."""
    folder.mkdir()
    for split in ("images", "labels"):
        name = IDX_NAMES[("train", split)]
        (folder / name).write_bytes((fmnist_dir / name).read_bytes())
    labels = np.arange(N, dtype=np.uint8) % 10
    images = np.zeros((N, 28, 28), np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 12:17] = 255
    write_idx(folder / IDX_NAMES[("test", "images")], images)
    write_idx(folder / IDX_NAMES[("test", "labels")], labels)
    return folder


@pytest.fixture(scope="module")
def learned_models(fmnist_dir, tmp_path_factory):
    """lenet_bn trained long enough (32 steps) that its answer depends on its input: the shared
    fixture's one-step models answer one class whatever they see."""
    artifacts = tmp_path_factory.mktemp("photos-artifacts")
    run_cli("-m", "trainer", "--models", "lenet_bn", "--recipe", "improved", "--epochs", "4",
            "--batch-size", "64", "--limit-train", "512", "--data-dir", str(fmnist_dir),
            "--artifacts", str(artifacts), "--device", "cpu", "--precision", "fp32",
            "--no-progress")
    run_cli("-m", "exporter", "--models", "lenet_bn", "--artifacts", str(artifacts),
            "--data-dir", str(fmnist_dir), "--no-progress")
    return artifacts / "models"


def test_bench_photos_sends_raw_and_photo_bytes_through_the_server(learned_models, fmnist_dir,
                                                                   tmp_path):
    models_dir = learned_models
    data_dir = short_bands(tmp_path / "data", fmnist_dir)
    out = subprocess.run(
        [sys.executable, "-m", "bench.photos", "--models-dir", str(models_dir), "--images",
         str(N), "--data-dir", str(data_dir), "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    document = json.loads((tmp_path / "bench" / "photos.json").read_text())
    assert f"CPU: {document['cpu']}" in out.stdout
    rows = {r["model"]: r for r in document["rows"]}
    assert set(rows) == {"lenet_bn"} and all(r["images"] == N for r in rows.values())
    # The server's answers equal onnxruntime's on the raw pixels and on the decoded photos.
    ds = data.load(data_dir, download=False)
    pixels, labels = ds.test_images[:N, 0].numpy(), ds.test_labels[:N].numpy()
    rng = np.random.default_rng(0)
    decoded = np.stack([decode_encoded(render_photo(p, rng)) for p in pixels])
    for name, row in rows.items():
        session = ort.InferenceSession(str(models_dir / name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        assert row["raw_acc"] == _accuracy(session, pixels, labels), name
        assert row["photo_acc"] == _accuracy(session, decoded, labels), name
        assert row["gap_points"] == round(100 * (row["raw_acc"] - row["photo_acc"]), 2)
    assert rows["lenet_bn"]["raw_acc"] != rows["lenet_bn"]["photo_acc"]  # else it could not tell
    assert "raw - photo" in out.stdout and "lenet_bn" in out.stdout
