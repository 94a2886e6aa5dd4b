r"""`python -m trainer`: train the registry's architectures on Fashion-MNIST and write checkpoints.

Examples:
    python -m trainer --list
    python -m trainer --models resnet18 lenet_bn --epochs 3
    python -m trainer --models lenet --time-budget 30 --limit-train 10000
    python -m trainer --models resnet18 --resume
    python -m trainer --models resnet18 --recipe improved --schedule budget --time-budget 90 \
        --eval-images 1000 --batch-size 32     # a short run that ends at a low learning rate
    torchrun --nproc_per_node=2 -m trainer --models resnet18
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from cli_text import HelpFormatter, add_version, format_table
from model_contract import default_artifacts
from trainer import checkpoint, models
from trainer import data as fmnist
from trainer.device import PRECISIONS, init_world, resolve_device, resolve_precision
from trainer.errors import UsageError
from trainer.metrics import runs_dir
from trainer.run import TrainConfig, train

log = logging.getLogger("trainer")
SUMMARY_COLUMNS = [("arch", "arch", ""), ("recipe", "recipe", ""), ("epochs", "epochs", ".2f"),
                   ("test_acc", "test acc", ".4f"), ("eval_images", "on images", "d"),
                   ("best_acc", "best acc", ".4f"), ("seconds", "train s", ".0f"),
                   ("examples_per_s", "ex/s", ".0f"), ("stopped", "stopped", "")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer", description=__doc__, formatter_class=HelpFormatter)
    add_version(p)
    names = list(models.ARCHITECTURES)
    p.add_argument("--models", nargs="+", choices=names, metavar="NAME",
                   help=f"architectures to train, in order (default: all: {' '.join(names)})")
    p.add_argument("--list", action="store_true",
                   help="print every architecture with its input side, parameter count and "
                        "default recipe, then exit")
    p.add_argument("--recipe", default="d2l", choices=models.RECIPES,
                   help="d2l: the seeds' SGD at a constant rate; improved: Nesterov "
                        "momentum, cosine schedule, weight decay, label smoothing, shift/flip "
                        "augmentation")
    p.add_argument("--epochs", type=int,
                   help="epochs (default: the recipe's, 10; with --resume, the resumed run's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's, per arch)")
    p.add_argument("--schedule", choices=models.SCHEDULES,
                   help="learning-rate schedule (default: the recipe's): constant; cosine: one "
                        "warm-up epoch, then a half cosine over the epochs; budget: warm-up for "
                        "10%% of --time-budget, then a half cosine that reaches 0 when the budget "
                        "is spent (for short runs that never finish an epoch)")
    p.add_argument("--batch-size", type=int,
                   help="global batch size, split over torchrun's processes (default: per arch)")
    p.add_argument("--limit-train", type=int, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="per architecture: seconds for training and its evaluations together: "
                        "training stops early enough to evaluate within it, then checkpoints "
                        "(the run can be continued with --resume)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when available, else cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto: bf16 on CPUs with native bf16 and on bf16 "
                        "GPUs, fp16 (+GradScaler) on older GPUs, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last memory format for the convolutions (default: per "
                        "architecture, what measured faster here: on except for lenet_bn)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, batch order, dropout and augmentation")
    p.add_argument("--resume", action="store_true",
                   help="continue each architecture from its last.pt: same step, optimizer, "
                        "schedule and RNG (--epochs may extend the run)")
    p.add_argument("--artifacts", type=Path, default=default_artifacts(),
                   help="folder for checkpoints/ and runs/ ($ARTIFACTS, else ./artifacts)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the four Fashion-MNIST idx(.gz) files (default: "
                        "$FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist, then a "
                        "torchvision download into data/)")
    p.add_argument("--eval-batch-size", type=int, default=500,
                   help="batch size for the test-set evaluation")
    p.add_argument("--eval-images", type=int, metavar="N",
                   help="evaluate each epoch on the first N test images only (default: all "
                        "10,000); the count is logged with each epoch's accuracy")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def list_architectures() -> str:
    rows = []
    for name, spec in models.ARCHITECTURES.items():
        recipe = spec.recipes["d2l"]
        rows.append({"name": name, "side": spec.input_side,
                     "params": models.count_parameters(spec.builder()) / 1e6,
                     "lr": recipe.lr, "batch": recipe.batch_size, "about": spec.description})
    return format_table(rows, [("name", "arch", ""), ("side", "input side", "d"),
                               ("params", "params (M)", ".2f"), ("lr", "lr", "g"),
                               ("batch", "batch", "d"), ("about", "what", "")])


def _config(args, arch: str, device: torch.device, precision: str) -> TrainConfig:
    spec = models.get(arch)
    recipe = spec.recipes[args.recipe]
    channels_last = spec.channels_last if args.channels_last is None else args.channels_last
    overrides = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size),
                                   ("schedule", args.schedule))
                 if v is not None}
    return TrainConfig(arch=arch, recipe_name=args.recipe, recipe=replace(recipe, **overrides),
                       device=device, precision=precision, channels_last=channels_last,
                       seed=args.seed, artifacts=args.artifacts, limit_train=args.limit_train,
                       time_budget=args.time_budget, resume=args.resume,
                       eval_batch_size=args.eval_batch_size, eval_images=args.eval_images,
                       epochs=args.epochs)


def check_writable(artifacts: Path, archs: list[str]) -> None:
    """Create and write into every folder the run will write, now: a folder that cannot take a
    checkpoint is found before the data loads, not at the first save after an epoch of work."""
    for arch in archs:
        for folder in (checkpoint.checkpoint_dir(artifacts, arch), runs_dir(artifacts, arch)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder):
                    pass
            except OSError as err:
                reason = err.strerror or str(err)
                raise UsageError(f"--artifacts {artifacts}: cannot write {folder} for {arch} "
                                 f"({reason}); give a folder you can write to") from err


def main(args: argparse.Namespace) -> int:
    if args.list:
        print(list_architectures())
        return 0
    archs = args.models or list(models.ARCHITECTURES)
    device = resolve_device(args.device)
    world = init_world(device)
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    precision = resolve_precision(args.precision, device)
    if world.is_main:
        check_writable(args.artifacts, archs)
    ds = fmnist.load(args.data_dir)
    log.info("Fashion-MNIST from %s: %d train, %d test images; device %s, %s, %d process(es)%s",
             ds.source, len(ds.train_labels), len(ds.test_labels), device, precision, world.size,
             f" in a {world.backend} process group" if world.distributed else "")
    ds = ds.to(device)
    rows = [train(_config(args, arch, device, precision), ds, world,
                  progress_bar=not args.no_progress) for arch in archs]
    if world.is_main:
        print()
        print(format_table(rows, SUMMARY_COLUMNS))
    if world.distributed:
        torch.distributed.destroy_process_group()
    return 130 if any(r["stopped"] == "interrupted" for r in rows) else 0


def run() -> None:
    """Exit 0 when done, 130 when interrupted, 2 with one line when the command cannot run as
    given (a bad argument, no data set, a last.pt that cannot be resumed); any other exception
    is a bug and keeps its traceback (exit 1)."""
    args = get_args_parser().parse_args()
    try:
        sys.exit(main(args))
    except (fmnist.DataError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
