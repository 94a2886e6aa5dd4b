"""Every flag of `python -m trainer`, observed in what a real run leaves: the checkpoints, the
metrics file, the log, the summary table.

Two runs share the work: MAIN (two architectures, two whole epochs, most flags given) and
BUDGET (a spent time budget, a zero learning rate, the defaults taken from the environment).
"""

from __future__ import annotations

import pytest
import torch

from tests.trainer.cli_runs import epoch_lines, metrics_records, run_trainer
from trainer import checkpoint, models
from trainer.loop import xavier_init

MAIN_FLAGS = ("--models", "lenet_bn", "lenet", "--recipe", "improved", "--schedule", "constant",
              "--epochs", "2", "--lr", "0.05", "--batch-size", "32", "--limit-train", "128",
              "--device", "cpu", "--precision", "fp32", "--no-channels-last",
              "--eval-batch-size", "50", "--eval-images", "100", "--no-progress")
# Without --no-progress (the bar is observed), --artifacts and --data-dir (taken from $ARTIFACTS
# and $FASHION_MNIST_DIR). --lr 0 keeps the weights where --seed initialised them.
BUDGET_FLAGS = ("--models", "lenet_bn", "--time-budget", "0", "--epochs", "3", "--lr", "0",
                "--seed", "7", "--limit-train", "64", "--batch-size", "64", "--channels-last",
                "--precision", "bf16", "--eval-images", "64", "--eval-batch-size", "16",
                "--device", "cpu")


class Run:
    def __init__(self, result, artifacts):
        self.result, self.artifacts, self.log = result, artifacts, result.stderr

    def last(self, arch: str) -> dict:
        return checkpoint.load(self.artifacts / "checkpoints" / arch / "last.pt")

    def best(self, arch: str) -> dict:
        return checkpoint.load(self.artifacts / "checkpoints" / arch / "best.pt")

    def records(self, arch: str) -> list[dict]:
        return metrics_records(self.artifacts, arch)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, fmnist_dir) -> Run:
    artifacts = tmp_path_factory.mktemp("main-run")
    result = run_trainer(*MAIN_FLAGS, "--data-dir", str(fmnist_dir), "--artifacts", str(artifacts))
    assert result.returncode == 0, result.stderr[-3000:]
    return Run(result, artifacts)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, fmnist_dir) -> Run:
    artifacts = tmp_path_factory.mktemp("budget-run")
    result = run_trainer(*BUDGET_FLAGS, env={"ARTIFACTS": str(artifacts),
                                             "FASHION_MNIST_DIR": str(fmnist_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    return Run(result, artifacts)


def summary_archs(stdout: str) -> list[str]:
    """The first column of the summary table, below its header and rule."""
    lines = stdout.strip().splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "})
    return [line.split()[0] for line in lines[rule + 1:]]


def test_models_trains_those_named_in_order(main_run):
    assert "test acc" in main_run.result.stdout
    assert summary_archs(main_run.result.stdout) == ["lenet_bn", "lenet"]
    assert sorted(p.name for p in (main_run.artifacts / "checkpoints").iterdir()) == [
        "lenet", "lenet_bn"]
    for arch in ("lenet_bn", "lenet"):
        assert main_run.last(arch)["arch"] == arch


def test_artifacts_holds_every_file_the_run_writes(main_run):
    for arch in ("lenet_bn", "lenet"):
        assert sorted(p.name for p in (main_run.artifacts / "checkpoints" / arch).iterdir()) == [
            "best.pt", "last.pt"]
        runs = sorted(p.suffix for p in (main_run.artifacts / "runs" / arch).iterdir())
        assert runs == [".jsonl", ".png"]
    assert sorted(p.name for p in main_run.artifacts.iterdir()) == ["checkpoints", "runs"]


def test_data_dir_is_the_data_read(main_run, fmnist_dir):
    assert f"Fashion-MNIST from {fmnist_dir}: 512 train, 256 test images" in main_run.log


def test_recipe_and_schedule(main_run):
    """--recipe improved brings Nesterov momentum; --schedule constant replaces its cosine
    schedule, so the rate is still 0.05 after the last step (the cosine ends at 0)."""
    for arch in ("lenet_bn", "lenet"):
        ck = main_run.last(arch)
        improved = models.get(arch).recipes["improved"]
        assert ck["recipe_name"] == "improved" and improved.schedule == "cosine"
        assert (ck["recipe"]["momentum"], ck["recipe"]["nesterov"]) == (0.9, True)
        assert ck["recipe"]["schedule"] == "constant"
        assert [r["lr"] for r in main_run.records(arch)] == [0.05, 0.05]


def test_lr_epochs_batch_size_and_limit_train(main_run):
    """128 images in batches of 32: 4 steps an epoch, 8 in two epochs, at the given rate."""
    assert "lenet: 128 train images, 4 steps/epoch of 32" in main_run.log
    for arch in ("lenet_bn", "lenet"):
        ck = main_run.last(arch)
        assert ck["recipe"]["lr"] == 0.05 != models.get(arch).recipes["improved"].lr
        assert (ck["epoch"], ck["step"], ck["recipe"]["epochs"]) == (2, 8, 2)
        assert ck["recipe"]["batch_size"] == 32 and ck["config"]["limit_train"] == 128
        assert [(r["epoch"], r["partial"], r["steps_per_epoch"]) for r in main_run.records(arch)
                ] == [(1, False, 4), (2, False, 4)]
        assert epoch_lines(main_run.log, arch) == [(1, 2, None, None), (2, 2, None, None)]


def test_best_pt_is_the_best_evaluated_epoch(main_run):
    for arch in ("lenet_bn", "lenet"):
        records = main_run.records(arch)
        best = max(records, key=lambda r: r["test_acc"])
        ck = main_run.best(arch)
        assert ck["test_accuracy"] == best["test_acc"] and ck["step"] == best["step"]


def test_eval_images_and_eval_batch_size(main_run):
    """Accuracy on 100 images is a whole number of hundredths."""
    assert "evaluation on 100 test images in batches of 50" in main_run.log
    for arch in ("lenet_bn", "lenet"):
        assert main_run.last(arch)["config"]["eval_batch_size"] == 50
        for r in main_run.records(arch):
            assert r["test_images"] == 100
            assert round(r["test_acc"] * 100, 6) == int(round(r["test_acc"] * 100))


def test_device_precision_and_channels_last(main_run, budget_run):
    """lenet defaults to channels-last and lenet_bn not: each flag turns its default round."""
    lenet = main_run.last("lenet")["config"]
    assert (lenet["device"], lenet["precision"], lenet["channels_last"]) == ("cpu", "fp32", False)
    assert {r["precision"] for r in main_run.records("lenet")} == {"fp32"}
    assert "fp32 on cpu\n" in main_run.log.split("lenet: 128 train images")[1]
    lenet_bn = budget_run.last("lenet_bn")["config"]
    assert (lenet_bn["precision"], lenet_bn["channels_last"]) == ("bf16", True)
    assert models.get("lenet_bn").channels_last is False and models.get("lenet").channels_last
    assert "bf16 on cpu, channels-last" in budget_run.log
    assert budget_run.records("lenet_bn")[0]["precision"] == "bf16"


def test_no_progress_hides_the_bar(main_run, budget_run):
    assert "step/s" not in main_run.log
    assert "lenet_bn epoch 1/3:" in budget_run.log and "step/s" in budget_run.log


def test_seed_initialises_the_weights(budget_run):
    """With --lr 0 the checkpoint holds the initial weights: those of seed 7, not seed 0."""
    ck = budget_run.last("lenet_bn")
    assert ck["seed"] == 7 and ck["recipe"]["lr"] == 0.0

    def initial(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        net = models.build("lenet_bn")
        xavier_init(net)
        return dict(net.named_parameters())

    assert all(torch.equal(p, ck["model"][name]) for name, p in initial(7).items())
    assert not any(torch.equal(p, ck["model"][name]) for name, p in initial(0).items()
                   if name.endswith("weight") and p.dim() > 1)


def test_time_budget_stops_and_completes_the_epoch_it_ends(budget_run):
    """A spent budget (0 s) stops after the first step. That step is the whole of a 64-image
    epoch: the epoch is evaluated, logged once as a whole epoch and counted as done, so a
    --resume starts the next one instead of evaluating this one again."""
    assert "time budget" in budget_run.result.stdout
    assert "lenet_bn: evaluating 64 test images takes ~" in budget_run.log
    assert "(timed on 16)" in budget_run.log  # the probe fits in one --eval-batch-size batch
    ck = budget_run.last("lenet_bn")
    assert ck["config"]["time_budget"] == 0.0 and ck["step"] == 1
    assert (ck["epoch"], ck["epoch_step"]) == (1, 0)
    assert epoch_lines(budget_run.log, "lenet_bn") == [(1, 3, None, None)]
    assert [(r["epoch"], r["partial"]) for r in budget_run.records("lenet_bn")] == [(1, False)]


def test_defaults_come_from_the_environment(budget_run, fmnist_dir):
    """No --artifacts, no --data-dir: $ARTIFACTS and $FASHION_MNIST_DIR are used."""
    assert (budget_run.artifacts / "checkpoints/lenet_bn/last.pt").is_file()
    assert f"Fashion-MNIST from {fmnist_dir}" in budget_run.log
