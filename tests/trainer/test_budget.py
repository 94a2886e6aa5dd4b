"""Short runs: the time budget covers evaluation, --eval-images caps it, the budget schedule."""

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.trainer.cli_runs import epoch_lines, metrics_records, run_trainer
from trainer import checkpoint, data, models
from trainer.cli import get_args_parser, main
from trainer.errors import UsageError
from trainer.loop import evaluate
from trainer.preprocess import Preprocess
from trainer.run import TrainConfig, train
from trainer.schedule import BudgetClock, lr_factor, probe_images


@pytest.fixture(scope="module")
def small_data(fmnist_dir):
    return data.load(fmnist_dir, download=False)


def config(tmp_path: Path, **kw) -> TrainConfig:
    recipe = replace(models.get("lenet_bn").recipes["d2l"], batch_size=64, epochs=1, lr=0.5)
    return replace(TrainConfig(arch="lenet_bn", recipe_name="d2l", recipe=recipe,
                               device=torch.device("cpu"), precision="fp32",
                               channels_last=False, seed=3, artifacts=tmp_path), **kw)


def test_eval_images_caps_the_evaluation(tmp_path, small_data):
    """The recorded accuracy is the model's accuracy on exactly the first 40 test images (a
    multiple of 1/40; on all 256 it would be another number), and the count is recorded."""
    row = train(config(tmp_path, eval_images=40), small_data, progress_bar=False)
    assert row["eval_images"] == 40
    ck = checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")
    assert ck["config"]["eval_images"] == 40 and ck["metrics"][-1]["test_images"] == 40
    net = models.build("lenet_bn")
    net.load_state_dict(ck["model"])
    on_40 = evaluate(net, Preprocess(28), small_data.test_images[:40],
                     small_data.test_labels[:40], batch_size=500, precision="fp32",
                     channels_last=False)
    on_all = evaluate(net, Preprocess(28), small_data.test_images, small_data.test_labels,
                      batch_size=500, precision="fp32", channels_last=False)
    assert ck["test_accuracy"] == on_40
    assert on_40 != on_all  # else this test could not tell the two apart


def test_budget_keeps_back_time_for_the_evaluation():
    """With 70 s of a 100 s budget gone, an evaluation timed at 40 s no longer fits (stop now),
    one at 10 s does; a reserve is never more than half the budget."""
    clock = BudgetClock(budget=100.0, eval_images=1000)
    clock.started = time.perf_counter() - 70.0
    assert not clock.spent() and clock.reserve() == 0.0  # nothing timed yet
    clock.timed_evaluation(lambda: 0.5, images=1)  # as the probe does
    assert clock.eval_s_per_image is not None
    clock.eval_s_per_image = 0.04  # 1000 images: 40 s
    assert clock.reserve() == pytest.approx(40.0) and clock.spent()
    clock.eval_s_per_image = 0.01  # 10 s
    assert clock.reserve() == pytest.approx(10.0) and not clock.spent()
    assert clock.fraction() == pytest.approx(70.0 / 90.0, abs=0.01)
    clock.eval_s_per_image = 0.2  # 200 s: more than the budget, so only half of it is kept back
    assert clock.reserve() == pytest.approx(50.0)
    clock.started = time.perf_counter() - 30.0
    assert not clock.spent() and clock.fraction() == pytest.approx(30.0 / 50.0, abs=0.01)
    assert BudgetClock(budget=None, eval_images=10).spent() is False


def test_budget_schedule_warms_up_then_decays_to_zero_over_the_budget():
    recipe = replace(models.get("resnet18").recipes["d2l"], schedule="budget")
    assert lr_factor(recipe, 0, 100, fraction=0.0) == pytest.approx(0.1)
    assert lr_factor(recipe, 5, 100, fraction=0.1) == pytest.approx(1.0)
    assert lr_factor(recipe, 7, 100, fraction=0.55) == pytest.approx(0.5)
    assert lr_factor(recipe, 9, 100, fraction=1.0) == pytest.approx(0.0, abs=1e-9)


def test_a_spent_budget_ends_at_learning_rate_zero(tmp_path, fmnist_dir):
    """--schedule budget with nothing left of the budget: one step, then the last learning rate
    is the schedule's end (0), not the recipe's constant rate; the recipe records the schedule."""
    base = ["--models", "lenet_bn", "--data-dir", str(fmnist_dir), "--artifacts", str(tmp_path),
            "--device", "cpu", "--precision", "fp32", "--no-progress", "--eval-images", "64"]
    assert main(get_args_parser().parse_args([*base, "--schedule", "budget",
                                              "--time-budget", "0"])) == 0
    ck = checkpoint.load(tmp_path / "checkpoints/lenet_bn/last.pt")
    assert ck["step"] == 1 and ck["recipe"]["schedule"] == "budget"
    assert ck["metrics"][-1]["lr"] == 0.0 and ck["config"]["time_budget"] == 0.0


def test_a_budgeted_run_times_an_evaluation_before_training(tmp_path, small_data, caplog):
    caplog.set_level("INFO", logger="trainer")
    train(config(tmp_path, time_budget=0.0, eval_images=100), small_data, progress_bar=False)
    assert "lenet_bn: evaluating 100 test images takes ~" in caplog.text
    assert "(timed on 100)" in caplog.text
    caplog.clear()
    train(config(tmp_path, eval_images=100), small_data, progress_bar=False)
    assert "test images takes ~" not in caplog.text  # no budget, no probe


def test_budget_schedule_without_a_budget_is_a_usage_error(tmp_path, small_data):
    cfg = config(tmp_path, recipe=replace(config(tmp_path).recipe, schedule="budget"))
    with pytest.raises(UsageError, match="--time-budget"):
        train(cfg, small_data, progress_bar=False)
    with pytest.raises(UsageError, match="--eval-images"):
        train(config(tmp_path, eval_images=0), small_data, progress_bar=False)


def test_the_probe_is_the_same_work_at_every_input_side():
    """~295k pixels: 376 LeNet images (fewer are all per-call overhead), 32 at 96 px, 5 at 224,
    never more than the evaluation or one of its batches."""
    assert [probe_images(side, 10_000, 500) for side in (28, 96, 224)] == [376, 32, 5]
    assert probe_images(28, 100, 500) == 100 and probe_images(28, 10_000, 200) == 200


def test_a_partial_epoch_is_logged_as_one_with_its_steps(tmp_path, fmnist_dir):
    """The issue's "epoch 3.00" logged twice: after a whole epoch, a budget spent at the next
    one's first step was logged as epoch 1 + 1/256 = "1.00", with another accuracy. Each epoch
    is logged once, a partial one with its steps, and its metrics record says so."""
    base = ["--models", "lenet", "--batch-size", "2", "--data-dir", str(fmnist_dir),
            "--artifacts", str(tmp_path), "--device", "cpu", "--precision", "fp32",
            "--eval-images", "64", "--no-progress"]
    first = run_trainer(*base, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_trainer(*base, "--resume", "--epochs", "2", "--time-budget", "0")
    assert second.returncode == 0, second.stderr[-3000:]
    said = re.findall(r"lenet epoch ([^:]+):", first.stderr + second.stderr)
    assert len(said) == len(set(said)) == 2, said
    assert epoch_lines(first.stderr, "lenet") == [(1, 1, None, None)]
    assert epoch_lines(second.stderr, "lenet") == [(2, 2, 1, 256)]
    records = metrics_records(tmp_path, "lenet")
    assert [(r["epoch"], r["partial"], r["epoch_steps"], r["steps_per_epoch"]) for r in records
            ] == [(1, False, 256, 256), (2, True, 1, 256)]
    assert records[1]["epoch_float"] == pytest.approx(1 + 1 / 256, abs=1e-4)


def test_a_budget_that_the_evaluation_used_up_starts_no_other_epoch(tmp_path, small_data):
    """When an epoch's evaluation leaves nothing of the budget, the run stops at that epoch's
    end instead of taking one more step only to pay for one more evaluation (the one-step
    epoch of the issue). The state to resume: an epoch whose last step was taken but not
    evaluated, as an interrupt at that step leaves it."""
    train(config(tmp_path), small_data, progress_bar=False)  # one epoch: 8 steps of 64
    last = tmp_path / "checkpoints/lenet_bn/last.pt"
    ck = checkpoint.load(last)
    ck["progress"].update(epoch=0, epoch_step=8)
    ck.update(epoch=0, epoch_step=8, metrics=[])
    checkpoint.save_atomic(ck, last)
    row = train(config(tmp_path, resume=True, epochs=3, time_budget=0.0), small_data,
                progress_bar=False)
    ck = checkpoint.load(last)
    assert row["stopped"] == "time budget" and row["epochs"] == 1
    assert (ck["epoch"], ck["epoch_step"], ck["step"]) == (1, 0, 8)
    assert [(m["epoch"], m["partial"]) for m in ck["metrics"]] == [(1, False)]
