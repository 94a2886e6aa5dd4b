"""Training runs on small real-format data: checkpoints, resume, time budget, best.pt policy."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.trainer.cli_runs import run_two_ranks
from trainer import checkpoint, data, models
from trainer.augment import shift_and_flip
from trainer.device import World
from trainer.errors import UsageError
from trainer.run import TrainConfig, resolve_resume, train
from trainer.schedule import lr_factor

# Momentum, a schedule that changes every step and random augmentation: a resume that forgot the
# optimizer's buffers, the schedule's position or the RNG state would train differently.
RANDOM_RECIPE = replace(models.get("lenet_bn").recipes["d2l"], batch_size=64, epochs=2, lr=0.05,
                        momentum=0.9, nesterov=True, schedule="cosine", augment=True)


@pytest.fixture(scope="module")
def small_data(fmnist_dir):
    return data.load(fmnist_dir, download=False)


def config(tmp_path: Path, **kw) -> TrainConfig:
    base = TrainConfig(arch="lenet_bn", recipe_name="d2l",
                       recipe=replace(models.get("lenet_bn").recipes["d2l"], batch_size=64,
                                      epochs=2, lr=0.5),
                       device=torch.device("cpu"), precision="fp32", channels_last=False, seed=3,
                       artifacts=tmp_path)
    return replace(base, **kw)


def test_run_writes_checkpoints_metrics_and_plot(tmp_path, small_data):
    row = train(config(tmp_path), small_data, progress_bar=False)
    assert row["stopped"] == "done" and row["epochs"] == 2
    ck = torch.load(tmp_path / "checkpoints/lenet_bn/last.pt", weights_only=True)
    assert ck["arch"] == "lenet_bn" and ck["epoch"] == 2 and ck["step"] == 16
    assert ck["recipe"]["batch_size"] == 64 and ck["seed"] == 3
    assert ck["torch_version"] == torch.__version__
    net = models.build("lenet_bn")
    net.load_state_dict(ck["model"])  # the state dict rebuilds the registry's model
    best = checkpoint.load(tmp_path / "checkpoints/lenet_bn/best.pt")
    assert best["test_accuracy"] == max(m["test_acc"] for m in ck["metrics"])
    [metrics_file] = (tmp_path / "runs/lenet_bn").glob("*.jsonl")
    lines = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "train_acc", "test_acc", "examples_per_s"} <= set(lines[0])
    assert (tmp_path / "runs/lenet_bn/curves.png").read_bytes()[:4] == b"\x89PNG"
    # Sixteen steps on the easy synthetic classes get well above chance (0.1).
    assert lines[-1]["test_acc"] > 0.3


def test_resume_continues_exactly(tmp_path, small_data):
    """Stopped after one step (a zero time budget), then resumed: the same weights and the
    same epoch losses as a run that was never interrupted. RANDOM_RECIPE makes each part of the
    restore matter: without the optimizer's momentum buffers, the schedule's position or the
    RNG state (augmentation) the weights differ (each deletion was checked to fail this)."""
    whole = tmp_path / "whole"
    train(config(whole, recipe=RANDOM_RECIPE), small_data, progress_bar=False)
    parts = tmp_path / "parts"
    first = train(config(parts, recipe=RANDOM_RECIPE, time_budget=0.0), small_data,
                  progress_bar=False)
    assert first["stopped"] == "time budget"
    stopped = checkpoint.load(parts / "checkpoints/lenet_bn/last.pt")
    assert (stopped["epoch"], stopped["epoch_step"], stopped["step"]) == (0, 1, 1)
    train(config(parts, recipe=RANDOM_RECIPE, resume=True), small_data, progress_bar=False)
    a = checkpoint.load(whole / "checkpoints/lenet_bn/last.pt")
    b = checkpoint.load(parts / "checkpoints/lenet_bn/last.pt")
    assert a["step"] == b["step"] == 16
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    whole_epochs = [m for m in a["metrics"] if not m["partial"]]
    parts_epochs = [m for m in b["metrics"] if not m["partial"]]
    assert [m["train_loss"] for m in whole_epochs] == pytest.approx(
        [m["train_loss"] for m in parts_epochs], abs=1e-6)


def test_resume_can_extend_the_epochs(tmp_path, small_data):
    train(config(tmp_path, recipe=replace(config(tmp_path).recipe, epochs=1)), small_data,
          progress_bar=False)
    row = train(config(tmp_path, resume=True, epochs=2), small_data, progress_bar=False)
    assert row["epochs"] == 2
    assert checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")["step"] == 16


def test_a_worse_run_keeps_the_better_best(tmp_path, small_data):
    train(config(tmp_path), small_data, progress_bar=False)
    best_before = checkpoint.load(tmp_path / "checkpoints/lenet_bn/best.pt")["test_accuracy"]
    train(config(tmp_path, time_budget=0.0, recipe=replace(config(tmp_path).recipe, lr=1e-6)),
          small_data, progress_bar=False)
    assert checkpoint.load(tmp_path / "checkpoints/lenet_bn/best.pt")["test_accuracy"] == best_before
    assert checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")["step"] == 1


def test_too_few_images_for_a_batch_is_a_clear_error(tmp_path, small_data):
    with pytest.raises(UsageError, match="raise --limit-train"):
        train(config(tmp_path, limit_train=10), small_data, progress_bar=False)


def test_lr_schedules():
    d2l = models.get("resnet18").recipes["d2l"]
    improved = models.get("resnet18").recipes["improved"]
    assert {lr_factor(d2l, s, 100) for s in (0, 50, 999)} == {1.0}
    assert lr_factor(improved, 0, 100) == pytest.approx(0.1)
    assert lr_factor(improved, 100, 100) == pytest.approx(1.0)
    assert lr_factor(improved, 1000, 100) == pytest.approx(0.0, abs=1e-9)


def test_augmentation_keeps_shape_and_only_moves_pixels():
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 10:18, 8:20] = 200  # the object is 4+ pixels from every edge
    torch.manual_seed(0)
    out = shift_and_flip(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out.flatten(1).sum(1, dtype=torch.int64),
                       images.flatten(1).sum(1, dtype=torch.int64))
    assert not torch.equal(out, images)


def test_resume_on_cuda_loads_last_pt_to_the_cpu(tmp_path, small_data):
    """--resume with --device cuda: last.pt is loaded to the CPU, where torch.set_rng_state needs
    its state; load_state_dict moves model and optimizer state to the parameters' device.
    No GPU here: the config only names cuda. Mapping to it (the bug) fails on this machine, as
    set_rng_state failed on a GPU one; loading to the CPU resumes."""
    train(config(tmp_path, time_budget=0.0), small_data, progress_bar=False)
    cfg, ckpt = resolve_resume(config(tmp_path, resume=True, device=torch.device("cuda")))
    assert cfg.device.type == "cuda"
    tensors = [ckpt["model"][k] for k in ckpt["model"]] + [ckpt["rng"][0]["torch"]]
    assert {t.device.type for t in tensors} == {"cpu"}
    torch.set_rng_state(ckpt["rng"][0]["torch"])


def _torchrun(fmnist_dir: Path, artifacts: Path, *flags: str) -> None:
    result = run_two_ranks(str(REPO / "tests/trainer/ddp_worker.py"), str(fmnist_dir),
                           str(artifacts), *flags, artifacts=artifacts,
                           resumed="--resume" in flags)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_resume_restores_each_ranks_random_stream(tmp_path, fmnist_dir):
    """Two gloo ranks augment their halves of each batch with their own random streams; stopped
    after one step and resumed, they end with the weights of a run never stopped. Restoring rank
    0's stream on both ranks (the bug) makes rank 1 augment differently."""
    _torchrun(fmnist_dir, tmp_path / "whole")
    _torchrun(fmnist_dir, tmp_path / "parts", "--stop")
    _torchrun(fmnist_dir, tmp_path / "parts", "--resume")
    a = checkpoint.load(tmp_path / "whole/checkpoints/lenet_bn/last.pt")
    b = checkpoint.load(tmp_path / "parts/checkpoints/lenet_bn/last.pt")
    assert a["step"] == b["step"] == 16
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, small_data):
    """64 images over 3 ranks would silently drop one image per step. Refused before any
    collective runs, so no process group is needed."""
    with pytest.raises(UsageError, match="global batch 64 does not split over 3 processes"):
        train(config(tmp_path), small_data, World(0, 3), progress_bar=False)


def test_an_unreadable_best_pt_is_moved_aside_not_overwritten(tmp_path, small_data, caplog):
    """A corrupt best.pt may be the only copy of a long run: it is renamed aside, said so in
    the log, and the new run writes its own best.pt."""
    best = tmp_path / "checkpoints/lenet_bn/best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING", logger="trainer"):
        train(config(tmp_path, time_budget=0.0), small_data, progress_bar=False)
    [aside] = best.parent.glob("best.pt.corrupt-*")
    assert aside.read_bytes() == b"not a checkpoint"
    assert checkpoint.load(best)["step"] == 1
    assert f"moved to {aside.name}" in caplog.text
