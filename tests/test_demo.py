"""scripts/demo.py: every architecture's share of the budget and test subset come from its input
side (one table), and the commands it runs say so."""

import sys

import pytest

from tests.conftest import REPO
from trainer import models

sys.path.insert(0, str(REPO / "scripts"))
import demo  # noqa: E402


def test_every_registered_side_has_a_plan_and_budgets_average_the_mean():
    names = list(models.ARCHITECTURES)
    per_arch = demo.plan(names, mean_budget=40.0)
    assert set(per_arch) == set(names)
    assert sum(p["budget"] for p in per_arch.values()) / len(names) == pytest.approx(40.0, abs=0.1)
    by_side = {p["side"]: p for p in per_arch.values()}
    assert by_side[96]["budget"] > by_side[28]["budget"] > by_side[224]["budget"]
    assert by_side[224]["test_images"] < by_side[96]["test_images"] < by_side[28]["test_images"]


def test_commands_carry_each_sides_budget_subset_and_overrides():
    args = demo.get_args_parser().parse_args(["--models", "lenet_bn", "resnet18", "alexnet",
                                              "--budget", "30", "--precision", "fp32"])
    groups = demo.groups(demo.plan(args.models, args.budget), args)
    assert [names for names, _ in groups] == [["lenet_bn"], ["resnet18"], ["alexnet"]]
    (_, g28), (_, g96), _ = groups
    train = demo.train_command(["resnet18"], g96, args)
    assert train[train.index("--time-budget") + 1] == str(g96["budget"])
    assert train[train.index("--eval-images") + 1] == "1000"
    assert train[train.index("--schedule") + 1] == "budget"
    assert train[train.index("--precision") + 1] == "fp32"
    export = demo.export_command(["lenet_bn"], g28, args)
    assert export[export.index("--test-images") + 1] == "10000"
    args = demo.get_args_parser().parse_args(["--test-images", "500", "--batch-size", "16"])
    [(names, g)] = demo.groups(demo.plan(["googlenet", "densenet"], 40), args)
    assert names == ["googlenet", "densenet"] and (g["test_images"], g["batch_size"]) == (500, 16)
