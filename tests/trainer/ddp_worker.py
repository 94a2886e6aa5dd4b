"""One rank of a two-process gloo run, launched by torchrun from test_run.py: lenet_bn with
test_run's random-augmentation recipe, so each rank's random stream shapes the weights.

Usage: torchrun --standalone --nproc_per_node=2 tests/trainer/ddp_worker.py DATA_DIR ARTIFACTS
[--stop] [--resume]  (--stop: a zero time budget, so one step, then last.pt)
"""

import sys
from pathlib import Path

import torch

from tests.trainer.test_run import RANDOM_RECIPE, config
from trainer import data
from trainer.device import init_world
from trainer.run import train


def main(data_dir: str, artifacts: str, *flags: str) -> None:
    world = init_world(torch.device("cpu"))
    cfg = config(Path(artifacts), recipe=RANDOM_RECIPE, resume="--resume" in flags,
                 time_budget=0.0 if "--stop" in flags else None)
    train(cfg, data.load(Path(data_dir), download=False), world, progress_bar=False)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
