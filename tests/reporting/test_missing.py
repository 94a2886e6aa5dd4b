"""Missing pieces are shown as "not available" with the command that makes them, never a crash."""

from __future__ import annotations

import shutil

from reporting.build import build
from tests.reporting.conftest import Page


def test_an_empty_artifacts_folder_builds_a_report_of_what_to_run(tmp_path, fmnist_dir):
    (tmp_path / "artifacts").mkdir()
    index = build(tmp_path / "artifacts", tmp_path / "out", fmnist_dir, None, progress=False)
    page = Page(index)
    assert "not available: no artifacts/bench/*.json: run make bench-train" in page.text
    assert page.images == []
    card = Page(tmp_path / "out" / "lenet_bn.html")
    assert "make train MODELS=lenet_bn" in card.text
    assert "make export MODELS=lenet_bn" in card.text


def test_without_the_data_set_the_report_says_so_and_shows_the_rest(tmp_path, artifacts):
    empty = tmp_path / "no-data"
    empty.mkdir()
    index = build(artifacts, tmp_path / "out", empty, None, progress=False)
    page = Page(index)
    assert "pass --data-dir" in page.text
    card = Page(tmp_path / "out" / "lenet_bn.html")
    assert card.images == ["img/lenet_bn-curves.png"]  # curves need no data; confusion does
    assert "not available" in card.text and "pass --data-dir" in card.text
    assert "ONNX model.onnx (metadata)" in card.text
    assert "variant model.copy.onnx" in card.text and "test images, its metadata" in card.text


def test_a_changed_best_checkpoint_is_pointed_out(tmp_path, artifacts, fmnist_dir):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("report", "bench"))
    with open(copy / "checkpoints" / "lenet_bn" / "best.pt", "ab") as f:
        f.write(b"\0")  # another checkpoint than the one version 1 was exported from
    build(copy, tmp_path / "out", fmnist_dir, 16, progress=False)
    text = Page(tmp_path / "out" / "lenet_bn.html").text
    assert "16 test images, onnxruntime CPU" in text  # the --test-images cap
    assert "best.pt has changed since version 1 was exported: make export MODELS=lenet_bn" in text
    assert "has changed" not in Page(tmp_path / "out" / "lenet.html").text


def test_broken_model_and_run_files_are_reported_not_raised(tmp_path, artifacts, fmnist_dir):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("report", "bench"))
    (copy / "models" / "lenet_bn" / "1" / "model.onnx").write_bytes(b"not a model")
    for log in (copy / "runs" / "lenet").glob("*.jsonl"):
        log.write_text("{not json\n")
    build(copy, tmp_path / "out", fmnist_dir, 16, progress=False)
    card = Page(tmp_path / "out" / "lenet_bn.html")
    assert "model.onnx unreadable" in card.text
    assert "unreadable" in Page(tmp_path / "out" / "lenet.html").text
