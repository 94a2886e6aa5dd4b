"""What a person reading the cards needs: near-chance models marked and measured on few images,
readable curves for a run of a few thousandths of an epoch, one epoch numbering, sample
predictions, the BatchNorms that stay and why, the floors, the time the report was finished, and
no notes meant for developers. Reports built by `python -m reporting` in a subprocess."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import model_contract as contract
from reporting import plots
from tests.reporting.conftest import TRAINED_TEST_IMAGES, Page
from tests.serving_fixtures import run_cli
from trainer import data as fmnist
from trainer import models

NEAR_CHANCE_IMAGES = 32
TEST_IMAGES = 100


@pytest.fixture(scope="module")
def out(trained, fmnist_dir, tmp_path_factory) -> Path:
    """The report of `trained` with the default image counts, near-chance ones capped at 32."""
    folder = tmp_path_factory.mktemp("report-out")
    proc = run_cli("-m", "reporting", "--artifacts", str(trained), "--out", str(folder),
                   "--data-dir", str(fmnist_dir), "--near-chance-images",
                   str(NEAR_CHANCE_IMAGES), "--no-progress")
    assert proc.stdout.strip() == f"report: {folder / 'index.html'}"
    assert proc.stderr == ""  # --no-progress: no bars
    return folder


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_out_puts_the_report_where_asked(out, trained):
    assert (out / "index.html").is_file() and (out / "lenet.html").is_file()
    assert not (trained / "report").exists()


def test_a_model_near_chance_gets_a_badge_and_a_good_one_none(out):
    index = Page(out / "index.html")
    assert index.badges.get(index.row("lenet")) == ["near chance"]
    assert index.row("lenet_bn") not in index.badges
    lenet = Page(out / "lenet.html")
    assert "Near chance: its test accuracy" in lenet.text
    assert "trained for 0.0039 epochs" in lenet.text  # one step of 2 of 512 images
    assert "near chance" not in Page(out / "lenet_bn.html").text.lower()


def test_near_chance_models_run_on_a_few_images_and_the_card_says_so(out, trained):
    labels = json.loads(_props(trained / "models/lenet/1/model.onnx")[contract.LABELS])
    lenet = Page(out / "lenet.html")
    row = lenet.row("ONNX model.onnx (this report)")
    assert f"| {NEAR_CHANCE_IMAGES} test images, onnxruntime CPU (the first " in row
    assert "is near chance" in row and "--near-chance-images" in row
    assert f"On the first {NEAR_CHANCE_IMAGES} test images only" in lenet.text
    per_class = [r for r in lenet.rows if r.count(" | ") == 2 and r.split(" | ")[0] in labels]
    assert len(per_class) == len(labels)
    assert sum(int(r.split(" | ")[1]) for r in per_class) == NEAR_CHANCE_IMAGES


def test_a_model_runs_on_as_many_images_as_its_exporter_measured(out):
    """The exporter measured on 64 of the 256 test images: the report spends no more."""
    row = Page(out / "lenet_bn.html").row("ONNX model.onnx (this report)")
    assert f"| {TRAINED_TEST_IMAGES} test images, onnxruntime CPU (the first" in row
    assert "as many as the exporter measured it on; --test-images 256 runs all" in row
    assert f"on {TRAINED_TEST_IMAGES}" in Page(out / "index.html").row("lenet_bn")


def test_test_images_runs_every_model_on_that_many(trained, fmnist_dir, tmp_path):
    proc = run_cli("-m", "reporting", "--artifacts", str(trained), "--out", str(tmp_path),
                   "--data-dir", str(fmnist_dir), "--test-images", str(TEST_IMAGES))
    assert "img/s" in proc.stderr  # without --no-progress: the bars
    card = Page(tmp_path / "lenet_bn.html")
    assert card.row("ONNX model.onnx (this report)").endswith(
        f"| {TEST_IMAGES} test images, onnxruntime CPU")
    assert f"every model run on the first {TEST_IMAGES} test images" in card.text


def _visible_tick_labels(ax) -> list:
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]


@pytest.mark.parametrize("arch", ["lenet", "lenet_bn"])
def test_curve_ticks_are_whole_epochs_that_do_not_overlap(trained, arch):
    """lenet ran 1/256 of an epoch: its ticks were 0.00390, 0.00391, ... on top of each other."""
    (log,) = (trained / "runs" / arch).glob("*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    fig = plots.curves_figure(records, arch)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = _visible_tick_labels(ax)
        texts = [t.get_text() for t in labels]
        assert len(texts) >= 2 and all(re.fullmatch(r"\d+", t) for t in texts), texts
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), texts


def test_epochs_are_numbered_one_way(out, trained):
    """The run log numbers the epoch in progress from 1, the checkpoint counts complete ones:
    for one step into the first epoch those are 1 and 0. The card says "after N epochs"."""
    report_json = json.loads((trained / "models/lenet/1/report.json").read_text())
    assert report_json["checkpoint"]["epoch"] == 0
    card = Page(out / "lenet.html")
    assert "after 0.0039 epochs" in card.row("checkpoint (run log, best epoch)")
    assert "after 0.0039 epochs" in card.row("exported checkpoint (report.json)")
    assert not re.search(r"epoch [01]\b", card.row("checkpoint (run log, best epoch)")
                         + card.row("exported checkpoint (report.json)"))
    assert card.row("epochs trained") == (
        "epochs trained | 0.0039 of 10 planned (1 training step); the run stopped part-way "
        "through epoch 1: its 0 s time budget ended it")


def test_batchnorms_that_stay_are_explained(out, trained):
    remaining = json.loads(_props(trained / "models/densenet/1/model.onnx")[contract.BN_REMAINING])
    assert len(remaining) == 20
    index = Page(out / "index.html")
    assert index.row("densenet").split(" | ")[7] == "1 / 20 why 20 stay"
    assert "densenet.html#batchnorm" in index.links
    card = Page(out / "densenet.html")
    assert "These 20 have no such layer right before them" in card.text
    for bn, why in remaining.items():
        assert f"{bn} | {why}" in card.rows
    assert 'id=batchnorm' in (out / "densenet.html").read_text()


def test_pages_carry_no_notes_for_developers(out, report):
    for page in [*out.glob("*.html"), *report.glob("*.html")]:
        text = Page(page).text
        assert not re.search(r"\w\.py\b|registry|docs/|DESIGN", text), (page.name, re.search(
            r".{60}(\w\.py\b|registry|docs/|DESIGN).{60}", text))


def test_build_time_is_when_the_report_was_finished(out):
    """Every picture and cached prediction was written before the time the pages show."""
    (shown,) = set(Page(out / "index.html").times) | set(Page(out / "lenet.html").times)
    finished = datetime.fromisoformat(shown).timestamp()
    written = max(p.stat().st_mtime for p in [*out.glob("img/*.png"), *out.glob(".cache/*")])
    assert int(finished) >= int(written)
    assert re.search(r"Built \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC in \d+ s from", Page(
        out / "index.html").text)


def test_floors_are_the_registrys(out):
    for arch in ("lenet", "lenet_bn", "densenet"):
        floor = f"{models.ARCHITECTURES[arch].d2l_floor:.4f}"
        assert Page(out / "index.html").row(arch).split(" | ")[6] == floor
        card = Page(out / f"{arch}.html")
        assert card.row("d2l floor").startswith(f"d2l floor | {floor} (d2l's test accuracy")
        assert f"d2l floor | {floor} | d2l's notebooks, 10 epochs of its recipe" in card.rows


def test_sample_predictions_are_the_served_models_answers(report, artifacts, fmnist_dir):
    """lenet_bn of the shared fixture is near chance: it gets some images right, most wrong."""
    model = artifacts / "models" / "lenet_bn" / "1" / contract.MODEL_FILE
    labels = json.loads(_props(model)[contract.LABELS])
    test = fmnist.load(fmnist_dir, download=False)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run([contract.LOGITS], {contract.INPUT: test.test_images.numpy()})[0]
    predicted, truth = logits.argmax(1), test.test_labels.numpy()
    card = Page(report / "lenet_bn.html")
    samples = [r.split(" | ") for r in card.rows if r.startswith("#")]
    assert samples
    right = 0
    for index, true_class, predicted_class in samples:
        i = int(index[1:])
        assert (true_class, predicted_class) == (labels[truth[i]], labels[predicted[i]])
        right += true_class == predicted_class
        src = f"img/lenet_bn-sample-{i}.png"
        assert card.alts[src] == f"test image {i}, true class {true_class}"
    assert 0 < right < len(samples) == 8
    assert len({int(s[0][1:]) for s in samples}) == len(samples)
    thumb = plots.plt.imread(report / "img" / f"lenet_bn-sample-{int(samples[0][0][1:])}.png")
    assert thumb.shape[:2] == (28 * plots.THUMBNAIL_SCALE,) * 2
    assert np.allclose(thumb[::plots.THUMBNAIL_SCALE, ::plots.THUMBNAIL_SCALE, 0] * 255,
                       test.test_images[int(samples[0][0][1:]), 0].numpy(), atol=1)


def test_invalid_metadata_is_shown_in_the_metadatas_own_words(tmp_path, artifacts, fmnist_dir):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("report", "bench"))
    path = copy / "models" / "lenet_bn" / "1" / contract.MODEL_FILE
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == contract.TEST_ACCURACY:
            prop.value = "high"
    onnx.save(model, str(path))
    with pytest.raises(contract.MetadataError) as err:
        contract.ModelMetadata.from_props(_props(path))
    run_cli("-m", "reporting", "--artifacts", str(copy), "--data-dir", str(fmnist_dir),
            "--no-progress")
    card = Page(copy / "report" / "lenet_bn.html")
    assert card.row("metadata") == f"metadata | invalid, so the server refuses this file: {err.value}"
    assert "high" not in card.row("ONNX model.onnx (metadata)").split(" | ")[1]
    assert str(err.value) in card.row("ONNX model.onnx (metadata)")
