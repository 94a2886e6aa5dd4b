"""The export pipeline's refusals and its versioning, on lenet_bn (the cheapest architecture with
BatchNorm after both convolutions and linears)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from exporter import pipeline
from exporter.errors import ExportError
from exporter.fold import FoldResult, fold_batchnorm
from exporter.report import ExportReport, Skipped
from exporter.testing import random_net, write_checkpoint
from model_contract import REPORT_FILE
from trainer import checkpoint
from trainer import data as fmnist

ARCH = "lenet_bn"


@pytest.fixture
def artifacts(tmp_path):
    write_checkpoint(random_net(ARCH), ARCH, checkpoint.checkpoint_dir(tmp_path, ARCH) / "best.pt")
    return tmp_path


@pytest.fixture(scope="module")
def data(fmnist_dir):
    loaded = fmnist.load(fmnist_dir)
    return lambda: loaded


def _model_dir_entries(artifacts) -> list[str]:
    """The arch folder's entries but its lock file."""
    arch_dir = artifacts / "models" / ARCH
    return sorted(p for p in os.listdir(arch_dir) if p != ".lock") if arch_dir.exists() else []


def test_tampered_fold_is_refused_and_nothing_is_written(artifacts, data, monkeypatch):
    def tampered(model):
        result = fold_batchnorm(model)
        with torch.no_grad():  # the last folded Linear, nudged by 1%: the kind of bug parity is for
            result.model.get_submodule(result.folded[-1].into).weight.mul_(1.01)
        return result

    monkeypatch.setattr(pipeline, "fold_batchnorm", tampered)
    with pytest.raises(ExportError, match=r"lenet_bn: parity check failed, nothing written: "
                                          r"max \|Δ logits\| .* > 0\.0001"):
        pipeline.export_arch(ARCH, artifacts, data)
    assert _model_dir_entries(artifacts) == []


def test_skipped_fold_is_caught_by_the_graph_check(artifacts, data, monkeypatch):
    monkeypatch.setattr(pipeline, "fold_batchnorm", lambda model: FoldResult(model, (), ()))
    with pytest.raises(ExportError, match=r"as exported: 4 BatchNormalization node\(s\) left"):
        pipeline.export_arch(ARCH, artifacts, data)
    assert _model_dir_entries(artifacts) == []


def test_versions_grow_and_an_unchanged_checkpoint_is_skipped(artifacts, data):
    """--force and the subset rule through the command line: test_flags.py."""
    first = pipeline.export_arch(ARCH, artifacts, data)
    assert isinstance(first, ExportReport) and first.version == 1
    report = json.loads((artifacts / "models" / ARCH / "1" / REPORT_FILE).read_text())
    assert report["version"] == 1 and report["parity"]["top1_agreement"] >= 0.9995

    again = pipeline.export_arch(ARCH, artifacts, data)
    assert again == Skipped(ARCH, 1, first.checkpoint["path"], first.checkpoint["sha256"])

    write_checkpoint(random_net(ARCH, seed=1), ARCH,
                     checkpoint.checkpoint_dir(artifacts, ARCH) / "best.pt")
    retrained = pipeline.export_arch(ARCH, artifacts, data)
    assert retrained.version == 2 and retrained.checkpoint["sha256"] != first.checkpoint["sha256"]
    assert _model_dir_entries(artifacts) == ["1", "2"]


def test_missing_checkpoint_says_what_to_run(tmp_path, data):
    with pytest.raises(ExportError, match=r"resnet18/best\.pt not found: run `make train "
                                          r"MODELS=resnet18` first"):
        pipeline.export_arch("resnet18", tmp_path, data)


@pytest.mark.parametrize("fields, message", [
    ({"arch": "mystery"}, r"holds architecture 'mystery', which trainer/models.py does not "
                          r"register \(known: lenet, lenet_bn,"),
    ({"arch": "lenet"}, r"holds 'lenet', not 'lenet_bn': move it to checkpoints/lenet/"),
    ({"model": {"0.weight": torch.zeros(1)}}, r"its weights do not fit lenet_bn"),
    ({"format": 99}, r"cannot read .*not an fmnist-serve checkpoint"),
])
def test_unusable_checkpoint_is_a_one_line_error(tmp_path, data, fields, message):
    write_checkpoint(random_net(ARCH), ARCH, checkpoint.checkpoint_dir(tmp_path, ARCH) / "best.pt",
                     **fields)
    with pytest.raises(ExportError, match=message) as err:
        pipeline.export_arch(ARCH, tmp_path, data)
    assert "\n" not in str(err.value)


def test_architectures_are_found_by_their_checkpoints(tmp_path):
    for folder in ("resnet18", "lenet", "zzz-unknown"):
        write_checkpoint(random_net("lenet"), "lenet",
                         checkpoint.checkpoint_dir(tmp_path, folder) / "best.pt")
    (checkpoint.checkpoint_dir(tmp_path, "alexnet")).mkdir()  # no best.pt: not listed
    assert pipeline.archs_with_checkpoints(tmp_path) == ["lenet", "resnet18", "zzz-unknown"]
