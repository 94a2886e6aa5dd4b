"""The report built from real artifacts shows the models' own figures, and every picture it
points at exists."""

from __future__ import annotations

import json

import onnx

import model_contract as contract
from tests.reporting.conftest import VARIANT, Page
from trainer import models

ARCH = "lenet_bn"
PNG = b"\x89PNG\r\n\x1a\n"


def _metadata(artifacts) -> dict[str, str]:
    model = onnx.load(str(artifacts / "models" / ARCH / "1" / contract.MODEL_FILE))
    return {p.key: p.value for p in model.metadata_props}


def test_every_picture_a_page_shows_exists_and_is_a_png(report):
    pages = sorted(report.glob("*.html"))
    assert {p.stem for p in pages} >= {"index", *models.ARCHITECTURES}
    shown = set()
    for page in pages:
        for src in Page(page).images:
            path = report / src
            assert path.is_file(), f"{page.name} shows {src}, which does not exist"
            assert path.read_bytes()[:8] == PNG, f"{src} is not a PNG"
            shown.add(src)
    assert {f"img/{ARCH}-curves.png", f"img/{ARCH}-confusion.png", f"img/{ARCH}-confused.png",
            "img/bench-throughput-latency.png"} <= shown


def test_summary_row_holds_the_models_own_figures(report, artifacts):
    meta = _metadata(artifacts)
    parameters = models.count_parameters(models.build(ARCH))
    records = [json.loads(line) for path in (artifacts / "runs" / ARCH).glob("*.jsonl")
               for line in path.read_text().splitlines()]
    index = Page(report / "index.html")
    row = index.row(ARCH)
    assert f"{ARCH}.html" in index.links
    assert f"{meta[contract.TEST_ACCURACY]} on {int(meta[contract.TEST_IMAGES]):,}" in row
    assert f"{parameters:,}" in row
    assert f"{max(r['test_acc'] for r in records):.4f}" in row
    assert f"{len(json.loads(meta[contract.BN_FOLDED]))} / 0" in row  # lenet_bn folds all four


def test_report_measures_what_the_exporter_measured(report, artifacts, fmnist_dir):
    """The exporter's ONNX accuracy is on the same test images, with the same runtime: the
    report's own run of the served model must find the same figure, and count every image."""
    meta = _metadata(artifacts)
    card = Page(report / f"{ARCH}.html")
    images = int(meta[contract.TEST_IMAGES])
    assert f"{meta[contract.TEST_ACCURACY]} | {images:,} test images, onnxruntime CPU" in card.row(
        "ONNX model.onnx (this report)")
    assert (f"variant model.{VARIANT}.onnx | {meta[contract.TEST_ACCURACY]} | {images:,} test "
            f"images, onnxruntime CPU; its metadata says {meta[contract.TEST_ACCURACY]} on "
            f"{images:,}") in card.rows
    labels = json.loads(meta[contract.LABELS])
    per_class = [r for r in card.rows if r.count(" | ") == 2 and r.split(" | ")[0] in labels]
    assert len(per_class) == len(labels)
    assert sum(int(r.split(" | ")[1].replace(",", "")) for r in per_class) == images


def test_card_shows_training_export_and_parity_facts(report, artifacts):
    card = Page(report / f"{ARCH}.html")
    parameters = models.count_parameters(models.build(ARCH))
    assert card.row("parameters").endswith(f"{parameters:,} ({parameters / 1e6:.2f} M)")
    assert card.row("input side") == f"input side | {models.get(ARCH).input_side}"
    assert card.row("model size").endswith(
        f"{(artifacts / 'models' / ARCH / '1' / contract.MODEL_FILE).stat().st_size / 1e6:.2f} MB")
    report_json = json.loads((artifacts / "models" / ARCH / "1" / contract.REPORT_FILE).read_text())
    assert f"{report_json['parity']['max_abs_diff']:.3g}" in card.row("max |Δ logits|")
    for folded in report_json["bn_folded"]:
        assert f"{folded['bn']} | {folded['into']}" in card.rows
    assert "training time" in card.text and "examples/s (whole run)" in card.text


def test_benchmark_rows_are_tabled(report):
    index = Page(report / "index.html")
    assert "model | mode | batch | images_per_s | p50_ms | p99_ms" in index.rows
    assert "lenet_bn | in-process | 1 | 25,000 | 0.04 | 0.09" in index.rows
    assert "lenet_bn | server | 32 | 6,400 | 4.9 | 7.25" in index.rows
    assert "seconds 1" in index.text and "ISA:" in index.text


def test_architectures_without_artifacts_say_what_makes_them(report):
    card = Page(report / "vgg11.html")
    assert "not available" in card.text
    assert "no " in card.text and "runs/vgg11/*.jsonl: run make train MODELS=vgg11" in card.text
    assert "run make train MODELS=vgg11, then make export MODELS=vgg11" in card.text
    assert "vgg11 | 224 | " in Page(report / "index.html").row("vgg11")


def test_confused_pairs_are_the_largest_off_diagonal_cells(report):
    card = Page(report / f"{ARCH}.html")
    labels = [r.split(" | ")[0] for r in card.rows if r.count(" | ") == 2][1:]  # per-class rows
    pairs = [r.split(" | ") for r in card.rows if r.count(" | ") == 3 and r.endswith("%")]
    assert pairs, "no confused pairs listed"
    counts = [int(p[2]) for p in pairs]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0
    assert all(p[0] in labels and p[1] in labels and p[0] != p[1] for p in pairs)
