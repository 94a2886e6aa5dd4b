"""One training run of one architecture: set up, resume, epochs, evaluation, checkpoints, metrics.

The loop is plain and visible (nanoGPT's shape): `train` sets up a `RunState` and `_epochs` walks
it through train / evaluate / record / checkpoint; the pieces they call are in loop.py, and the
time budget and schedules in schedule.py. Everything the steps share travels in that one state
object, as torchvision's references pass `args`, rather than in long parameter lists.

A run stops cleanly at the end of its epochs, when its time budget is spent, or on
Ctrl-C/SIGTERM: it finishes the step it is in, writes `last.pt` (and, except on an interrupt,
evaluates first), so `--resume` continues from exactly that step with the same batch order,
optimizer, schedule and RNG. An evaluated epoch is one metrics record and one log line; one that
a budget or a signal cut short says so ("partial", with its steps). The budget is checked after
each step and after each evaluation, so a run whose evaluation used up the budget stops there
instead of taking one more step and paying for one more evaluation.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from trainer import checkpoint, models
from trainer.augment import shift_and_flip
from trainer.data import FashionMNIST
from trainer.device import World, all_gather, all_reduce_sum, broadcast_flag
from trainer.errors import UsageError
from trainer.loop import batch_slice, epoch_permutation, evaluate, train_step, xavier_init
from trainer.metrics import append_jsonl, plot_curves, runs_dir
from trainer.models import Recipe
from trainer.preprocess import Preprocess
from trainer.schedule import BudgetClock, lr_factor, probe_images

log = logging.getLogger("trainer")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    arch: str
    recipe_name: str
    recipe: Recipe
    device: torch.device
    precision: str
    channels_last: bool
    seed: int
    artifacts: Path
    limit_train: int | None = None
    time_budget: float | None = None
    resume: bool = False
    eval_batch_size: int = 500
    eval_images: int | None = None  # per-epoch evaluation on the first N test images only
    epochs: int | None = None  # --epochs; None keeps the recipe's or, on resume, last.pt's


@dataclass(kw_only=True)
class Progress:
    """Where a run is; everything here goes into the checkpoint."""

    run_id: str
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    epoch_step: int = 0  # steps taken inside the unfinished epoch
    epoch_loss: float = 0.0  # sums over the unfinished epoch's steps
    epoch_correct: float = 0.0
    epoch_seen: float = 0.0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    test_accuracy: float | None = None
    best_test_accuracy: float = -1.0
    metrics: list[dict] = field(default_factory=list)

    def next_epoch(self) -> None:
        """The unfinished epoch is finished: the next one starts from scratch."""
        self.epoch += 1
        self.epoch_step = 0
        self.epoch_loss = self.epoch_correct = self.epoch_seen = self.epoch_seconds = 0.0


@dataclass(kw_only=True)
class RunState:
    """One architecture's run as the loop's steps see it, built once by `_setup`."""

    cfg: TrainConfig
    data: FashionMNIST
    world: World
    net: nn.Module  # the network itself: what checkpoints hold and evaluations run
    model: nn.Module  # what trains: `net`, or DistributedDataParallel around it
    preprocess: Preprocess
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    clock: BudgetClock
    progress: Progress
    n_train: int
    steps_per_epoch: int
    n_eval: int  # test images each evaluation covers
    progress_bar: bool
    best_floor: float = -1.0  # the test accuracy a new best.pt must beat (rank 0's view)

    @property
    def ckdir(self) -> Path:
        return checkpoint.checkpoint_dir(self.cfg.artifacts, self.cfg.arch)

    @property
    def runs(self) -> Path:
        return runs_dir(self.cfg.artifacts, self.cfg.arch)

    def epoch_float(self) -> float:
        return self.progress.epoch + self.progress.epoch_step / self.steps_per_epoch


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step; a second one
    interrupts at once (the default behaviour)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signum, self._previous[signum])
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: finishing this step, then saving last.pt (again to abort now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_optimizer(net: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator and, on a GPU, its device's generator."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _checkpoint_dict(run: RunState, rng: list[dict]) -> dict:
    cfg, progress = run.cfg, run.progress
    return {
        "format": checkpoint.FORMAT,
        "arch": cfg.arch,
        "input_side": models.get(cfg.arch).input_side,
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": progress.epoch,
        "step": progress.step,
        "epoch_step": progress.epoch_step,
        "progress": {k: v for k, v in progress.__dict__.items() if k != "metrics"},
        "metrics": progress.metrics,
        "test_accuracy": progress.test_accuracy,
        "best_test_accuracy": progress.best_test_accuracy,
        "recipe_name": cfg.recipe_name,
        "recipe": cfg.recipe.as_dict(),
        "seed": cfg.seed,
        "rng": rng,  # one rng_state() per rank, in rank order
        "config": {"limit_train": cfg.limit_train, "eval_images": cfg.eval_images,
                   "eval_batch_size": cfg.eval_batch_size, "time_budget": cfg.time_budget,
                   "precision": cfg.precision, "channels_last": cfg.channels_last,
                   "world_size": run.world.size, "device": cfg.device.type},
        "torch_version": str(torch.__version__),
    }


def _restore(run: RunState, ckpt: dict) -> Progress:
    """Continue from a checkpoint loaded to the CPU: load_state_dict copies model and optimizer
    state to the parameters' device, and torch.set_rng_state accepts only a CPU tensor."""
    run.net.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    _restore_rng(ckpt["rng"], run.world, run.cfg.device)
    return Progress(**ckpt["progress"], metrics=list(ckpt["metrics"]))


def _restore_rng(states: list[dict], world: World, device: torch.device) -> None:
    """Each rank continues its own random stream (dropout, augmentation). With another number of
    processes than wrote last.pt the batches split differently anyway: the streams stay seeded
    from (seed, rank) and the run goes on, not exactly as an uninterrupted one would."""
    if isinstance(states, dict):  # written before per-rank states: rank 0's alone, every GPU's
        states = [{"torch": states["torch"], "cuda": (states["cuda"] or [None])[0]}]
    if len(states) != world.size:
        log.warning("last.pt was written by %d process(es), this run has %d: it continues, but "
                    "not exactly as an uninterrupted run would", len(states), world.size)
        return
    state = states[world.rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_budget_schedule(cfg: TrainConfig) -> None:
    if cfg.recipe.schedule == "budget" and cfg.time_budget is None:
        raise UsageError(f"{cfg.arch}: the budget schedule spreads over --time-budget; give one, "
                         f"or choose --schedule constant or cosine")
    if cfg.eval_images is not None and cfg.eval_images < 1:
        raise UsageError(f"--eval-images must be at least 1, got {cfg.eval_images}")


def _check_batch_split(cfg: TrainConfig, world: World) -> None:
    """Each rank takes batch_size // world.size images of a global batch: a remainder would be
    dropped at every step without a word."""
    if cfg.recipe.batch_size % world.size:
        raise UsageError(f"{cfg.arch}: global batch {cfg.recipe.batch_size} does not split over "
                         f"{world.size} processes; give a --batch-size divisible by {world.size}")


def _previous_best(path: Path) -> float:
    """Test accuracy of an existing best.pt (from this run or an earlier one), -1 if none.
    An unreadable one may be the only trace of a long run: it is renamed aside, not overwritten."""
    if not path.exists():
        return -1.0
    try:
        return float(checkpoint.load(path, mmap=True).get("test_accuracy") or -1.0)
    except checkpoint.CheckpointError as err:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
        log.warning("%s; moved to %s, the next evaluated epoch writes a new best.pt", err,
                    aside.name)
        return -1.0


def resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """The config to train with, and last.pt when the run continues it. On resume, last.pt's
    recipe (its epochs included), data limit and seed win, so the batch order and the LR
    schedule stay those of the run being continued; only --epochs, when given, changes the
    length (and with it the schedule's end)."""
    ckpt = _checkpoint_to_resume(cfg)
    if ckpt is not None:
        cfg = replace(cfg, recipe=Recipe(**ckpt["recipe"]), recipe_name=ckpt["recipe_name"],
                      limit_train=ckpt["config"]["limit_train"], seed=ckpt["seed"])
    if cfg.epochs is not None:
        cfg = replace(cfg, recipe=replace(cfg.recipe, epochs=cfg.epochs))
    return cfg, ckpt


def _checkpoint_to_resume(cfg: TrainConfig) -> dict | None:
    """last.pt (loaded to the CPU: the RNG state must stay there, see _restore) with --resume;
    None for a fresh run."""
    last = checkpoint.checkpoint_dir(cfg.artifacts, cfg.arch) / "last.pt"
    if not cfg.resume:
        if last.exists():
            log.info("%s: starting a fresh run; %s will be replaced (--resume continues it)",
                     cfg.arch, last)
        return None
    if not last.exists():
        log.info("%s: --resume, but no %s yet: starting fresh", cfg.arch, last)
        return None
    try:
        ckpt = checkpoint.load(last)
    except checkpoint.CheckpointError as err:
        raise UsageError(f"cannot resume {cfg.arch}: {err}; delete it, or run without --resume "
                         f"to start afresh") from err
    if ckpt["arch"] != cfg.arch:
        raise UsageError(f"cannot resume {cfg.arch}: {last} holds {ckpt['arch']!r}")
    return ckpt


def train(cfg: TrainConfig, data: FashionMNIST, world: World = World(),
          progress_bar: bool = True) -> dict:
    """Train `cfg.arch` on `data` (already on cfg.device); returns the run's summary row."""
    cfg, ckpt = resolve_resume(cfg)
    _check_batch_split(cfg, world)
    _check_budget_schedule(cfg)
    run = _setup(cfg, ckpt, data, world, progress_bar)
    if cfg.time_budget is not None:
        _probe_evaluation(run)
    _log_setup(run)
    with StopRequest() as stop:
        stopped = _epochs(run, stop)
    if world.distributed:
        torch.distributed.barrier()
    return _summary(run, stopped)


def _build_network(cfg: TrainConfig, world: World) -> nn.Module:
    """The registry's network with d2l's initialisation from `cfg.seed`, on the device; then
    each rank's own random stream (dropout and augmentation differ across ranks)."""
    torch.manual_seed(cfg.seed)
    net = models.build(cfg.arch)
    xavier_init(net)
    net.to(cfg.device,
           memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    torch.manual_seed(cfg.seed + world.rank)
    return net


def _setup(cfg: TrainConfig, ckpt: dict | None, data: FashionMNIST, world: World,
           progress_bar: bool) -> RunState:
    recipe = cfg.recipe
    n_train = min(cfg.limit_train or len(data.train_labels), len(data.train_labels))
    steps_per_epoch = n_train // recipe.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{cfg.arch}: {n_train} training images make no batch of "
                         f"{recipe.batch_size}; raise --limit-train or lower --batch-size")
    n_eval = min(cfg.eval_images or len(data.test_labels), len(data.test_labels))
    net = _build_network(cfg, world)
    optimizer = make_optimizer(net, recipe)
    clock = BudgetClock(cfg.time_budget, n_eval)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch, clock.fraction()))
    model = net
    if world.distributed:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[cfg.device] if cfg.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = RunState(cfg=cfg, data=data, world=world, net=net, model=model,
                   preprocess=Preprocess(models.get(cfg.arch).input_side), optimizer=optimizer,
                   scheduler=scheduler, scaler=scaler, clock=clock,
                   progress=Progress(run_id=run_id), n_train=n_train,
                   steps_per_epoch=steps_per_epoch, n_eval=n_eval, progress_bar=progress_bar)
    if ckpt is not None:
        run.progress = _restore(run, ckpt)
        log.info("%s: resuming at epoch %d, step %d", cfg.arch, run.progress.epoch,
                 run.progress.step)
    if world.is_main:
        run.best_floor = _previous_best(run.ckdir / "best.pt")
    return run


def _evaluate(run: RunState, images: int | None = None) -> float:
    """Top-1 accuracy of the network on the first `images` test images (default: the run's
    evaluation set), in evaluation batches (one batch of `images` when given)."""
    n = images or run.n_eval
    return evaluate(run.net, run.preprocess, run.data.test_images[:n], run.data.test_labels[:n],
                    batch_size=images or run.cfg.eval_batch_size, precision=run.cfg.precision,
                    channels_last=run.cfg.channels_last, world=run.world)


def _probe_evaluation(run: RunState) -> None:
    """What an evaluation will cost, measured before the first one, so that the clock keeps
    that much of the budget back from the first step on."""
    probe = probe_images(run.preprocess.input_side, run.n_eval, run.cfg.eval_batch_size)
    for _ in range(2):  # the first call warms up (kernels, caches); the second is timed
        run.clock.timed_evaluation(lambda: _evaluate(run, probe), probe)
    log.info("%s: evaluating %d test images takes ~%.1f s (timed on %d): training stops that "
             "much before the %g s budget's end (at most half of it)", run.cfg.arch, run.n_eval,
             run.n_eval * run.clock.eval_s_per_image, probe, run.cfg.time_budget)


def _log_setup(run: RunState) -> None:
    cfg, recipe = run.cfg, run.cfg.recipe
    log.info("%s: %d train images, %d steps/epoch of %d, recipe %s (lr %g, %s schedule), "
             "evaluation on %d test images in batches of %d, %s on %s%s", cfg.arch, run.n_train,
             run.steps_per_epoch, recipe.batch_size, cfg.recipe_name, recipe.lr, recipe.schedule,
             run.n_eval, cfg.eval_batch_size, cfg.precision, cfg.device,
             ", channels-last" if cfg.channels_last else "")


def _epochs(run: RunState, stop: StopRequest) -> str:
    """Train / evaluate / record / checkpoint until the epochs are done or something stops the
    run; returns why it ended: "done", "time budget" or "interrupted"."""
    progress, epochs = run.progress, run.cfg.recipe.epochs
    while progress.epoch < epochs:
        reason = _train_epoch(run, stop)
        if reason == "interrupted":
            _save(run, evaluated=False)
            return reason
        progress.test_accuracy = run.clock.timed_evaluation(lambda: _evaluate(run))
        progress.best_test_accuracy = max(progress.best_test_accuracy, progress.test_accuracy)
        _record_epoch(run)
        if progress.epoch_step == run.steps_per_epoch:  # also when the budget ended its last step
            progress.next_epoch()
        if reason is None and progress.epoch < epochs and broadcast_flag(run.world,
                                                                           run.clock.spent()):
            reason = "time budget"  # the evaluation used up what was left
        _save(run, evaluated=True)
        if reason is not None:
            break
    return "done" if progress.epoch >= epochs else reason


def _train_epoch(run: RunState, stop: StopRequest) -> str | None:
    """Steps through the rest of the current epoch; returns why it stopped early, or None."""
    cfg, progress, world = run.cfg, run.progress, run.world
    perm = epoch_permutation(cfg.seed, progress.epoch, run.n_train).to(cfg.device)
    loss_sum = torch.zeros((), device=cfg.device)
    correct = torch.zeros((), device=cfg.device)
    seen = 0
    run.model.train()
    bar = _progress_bar(run)
    t0 = time.perf_counter()
    reason = None
    for i in range(progress.epoch_step, run.steps_per_epoch):
        loss, hits, n = _step(run, batch_slice(perm, i, cfg.recipe.batch_size, world))
        loss_sum += loss
        correct += hits
        seen += n
        progress.step += 1
        progress.epoch_step = i + 1
        bar.update()
        if bar.n % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                            ex_s=f"{seen * world.size / (time.perf_counter() - t0):.0f}")
        over_budget = run.clock.spent()
        if world.distributed or stop.requested or over_budget:
            if broadcast_flag(world, stop.requested or over_budget):
                reason = "interrupted" if stop.requested else "time budget"
                break
    bar.close()
    _add_to_epoch(progress, all_reduce_sum(world, loss_sum, correct, torch.tensor(float(seen))),
                  time.perf_counter() - t0)
    return reason


def _step(run: RunState, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step on the training images `idx`: (summed loss, correct, images)."""
    recipe = run.cfg.recipe
    images, labels = run.data.train_images[idx], run.data.train_labels[idx]
    if recipe.augment:
        images = shift_and_flip(images)
    loss, hits = train_step(run.model, run.preprocess, run.optimizer, images, labels,
                            precision=run.cfg.precision, channels_last=run.cfg.channels_last,
                            label_smoothing=recipe.label_smoothing, scaler=run.scaler)
    run.scheduler.step()
    return loss, hits, len(idx)


def _progress_bar(run: RunState) -> tqdm:
    """Rank 0's bar for this epoch; redrawn at most every 30 s when stderr is not a terminal."""
    cfg, progress = run.cfg, run.progress
    return tqdm(total=run.steps_per_epoch, initial=progress.epoch_step, unit="step", leave=False,
                desc=f"{cfg.arch} epoch {progress.epoch + 1}/{cfg.recipe.epochs}",
                disable=not (run.world.is_main and run.progress_bar), dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30)


def _add_to_epoch(progress: Progress, totals: list[torch.Tensor], seconds: float) -> None:
    """Add one call's (loss, correct, seen) sums over every rank, and its time, to the epoch."""
    progress.epoch_loss += float(totals[0])
    progress.epoch_correct += float(totals[1])
    progress.epoch_seen += float(totals[2])
    progress.epoch_seconds += seconds
    progress.train_seconds += seconds


def _record_epoch(run: RunState) -> None:
    """The evaluated epoch's metrics record, appended to the run's file and plotted, and its one
    log line (rank 0 only)."""
    if not run.world.is_main:
        return
    record = _epoch_record(run)
    run.progress.metrics.append(record)
    append_jsonl(run.runs / f"{run.progress.run_id}.jsonl", record)
    cfg = run.cfg
    plot_curves(run.progress.metrics, run.runs / "curves.png",
                f"{cfg.arch} ({cfg.recipe_name} recipe, {cfg.precision}, {cfg.device.type})")
    partial = (f", partial ({record['epoch_steps']} of {run.steps_per_epoch} steps)"
               if record["partial"] else "")
    log.info("%s epoch %d/%d%s: loss %.3f, train acc %.3f, test acc %.4f, %.0f ex/s", cfg.arch,
             record["epoch"], cfg.recipe.epochs, partial, record["train_loss"],
             record["train_acc"], record["test_acc"], record["examples_per_s"])


def _epoch_record(run: RunState) -> dict:
    progress = run.progress
    seen = max(progress.epoch_seen, 1.0)
    return {
        "arch": run.cfg.arch, "epoch": progress.epoch + 1,
        "epoch_float": round(run.epoch_float(), 4),
        "partial": progress.epoch_step < run.steps_per_epoch, "epoch_steps": progress.epoch_step,
        "steps_per_epoch": run.steps_per_epoch, "step": progress.step,
        "train_loss": progress.epoch_loss / seen, "train_acc": progress.epoch_correct / seen,
        "test_acc": progress.test_accuracy, "test_images": run.n_eval,
        "examples_per_s": progress.epoch_seen / max(progress.epoch_seconds, 1e-9),
        "epoch_seconds": progress.epoch_seconds, "train_seconds": progress.train_seconds,
        "lr": run.optimizer.param_groups[0]["lr"], "precision": run.cfg.precision,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _save(run: RunState, evaluated: bool) -> None:
    """last.pt, and best.pt when this evaluation beat every earlier one (rank 0 writes)."""
    rng = all_gather(run.world, rng_state(run.cfg.device))  # a collective: every rank takes part
    if not run.world.is_main:
        return
    state = _checkpoint_dict(run, rng)
    checkpoint.save_atomic(state, run.ckdir / "last.pt")
    if evaluated and run.progress.test_accuracy > run.best_floor:
        checkpoint.save_atomic(state, run.ckdir / "best.pt")
        run.best_floor = run.progress.test_accuracy


def _summary(run: RunState, stopped: str) -> dict:
    progress = run.progress
    return {"arch": run.cfg.arch, "recipe": run.cfg.recipe_name, "epochs": run.epoch_float(),
            "test_acc": progress.test_accuracy, "best_acc": progress.best_test_accuracy,
            "seconds": progress.train_seconds,
            "examples_per_s": progress.metrics[-1]["examples_per_s"] if progress.metrics else None,
            "stopped": stopped, "elapsed": run.clock.elapsed(), "eval_images": run.n_eval}
