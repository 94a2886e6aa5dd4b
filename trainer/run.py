"""One training run of one architecture: set up, resume, epochs, evaluation, checkpoints, metrics.

The loop is plain and visible (nanoGPT's shape); the pieces it calls are in loop.py. A run stops
cleanly at the end of its epochs, when its time budget is spent, or on Ctrl-C/SIGTERM: it finishes
the step it is in, writes `last.pt` (and, except on an interrupt, evaluates first), so `--resume`
continues from exactly that step with the same batch order, optimizer, schedule and RNG.

A time budget covers the evaluations too: training stops while there is still time, by the
latest estimate, to evaluate (`--eval-images` caps how many test images that takes). The
"budget" schedule spreads a warm-up and a cosine decay over that time instead of over epochs,
so a short run ends at a low learning rate however fast the machine is.
"""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger("trainer")


@dataclass(frozen=True)
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


@dataclass
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


MAX_RESERVE = 0.5  # of the budget
# The probe (evaluated twice before training, the second time timed) is a fixed amount of work:
# 32 images at 96 px, ~380 at 28 px (at 32 a LeNet's time is all per-call overhead, and its
# estimate for 10,000 images came out 5x too long), 6 at 224 px.
PROBE_PIXELS = 32 * 96 * 96


class BudgetClock:
    """The time side of `--time-budget`: how long the run has gone, how much to keep back for the
    evaluation that ends it, and how far through its training time it is (for the schedule)."""

    def __init__(self, budget: float | None, eval_images: int):
        self.budget, self.eval_images = budget, eval_images
        self.started = time.perf_counter()
        self.eval_s_per_image: float | None = None  # measured by the probe, then each evaluation

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def reserve(self) -> float:
        """Seconds kept back for the final evaluation, as the last timed evaluation (or the
        probe) predicts, and never more than half the budget: a small probe on a busy machine
        can be far off, and must not end the run before it has begun."""
        if self.eval_s_per_image is None:
            return 0.0
        estimate = self.eval_images * self.eval_s_per_image
        return min(estimate, MAX_RESERVE * self.budget) if self.budget is not None else estimate

    def fraction(self) -> float:
        """Share of the training time (the budget less the reserve) used so far, in [0, 1]."""
        if self.budget is None:
            return 0.0
        train_time = self.budget - self.reserve()
        return 1.0 if train_time <= 0 else min(1.0, self.elapsed() / train_time)

    def spent(self) -> bool:
        return self.budget is not None and self.elapsed() + self.reserve() >= self.budget

    def timed_evaluation(self, evaluate_fn, images: int | None = None) -> float:
        """Run `evaluate_fn` (an evaluation of `images` test images, by default all of the
        run's) and keep its time per image for the next reserve."""
        t0 = time.perf_counter()
        accuracy = evaluate_fn()
        self.eval_s_per_image = (time.perf_counter() - t0) / max(1, images or self.eval_images)
        return accuracy


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


def probe_images(input_side: int, eval_images: int, eval_batch_size: int) -> int:
    """How many test images the pre-training probe evaluates: PROBE_PIXELS' worth, within one
    evaluation batch and the evaluation itself."""
    return max(1, min(PROBE_PIXELS // input_side ** 2, eval_images, eval_batch_size))


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, fraction: float = 0.0) -> float:
    """Multiplier of the base learning rate at `step` (or, for "budget", at `fraction` of the
    time budget's training time).

    constant: 1 throughout (d2l). cosine: a linear warm-up over the first epoch from 0.1 to 1
    (large momentum steps on Xavier-initialised nets otherwise diverge early), then a half cosine
    down to 0 at the last step. budget: the same shape over time: warm-up for the first 10% of
    the budget, then a half cosine that reaches 0 when the budget (less the final evaluation)
    is spent; a run of a minute or two never finishes an epoch of a 96-pixel model on a CPU, so
    an epoch-based schedule would never leave its warm-up.
    """
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "budget":
        if fraction < BUDGET_WARMUP:
            return 0.1 + 0.9 * fraction / BUDGET_WARMUP
        return 0.5 * (1 + math.cos(math.pi * (fraction - BUDGET_WARMUP) / (1 - BUDGET_WARMUP)))
    warmup, total = steps_per_epoch, recipe.epochs * steps_per_epoch
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


BUDGET_WARMUP = 0.1


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator and, on a GPU, its device's generator."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _checkpoint_dict(cfg: TrainConfig, net: nn.Module, optimizer, scheduler, scaler,
                     progress: Progress, world: World, rng: list[dict]) -> dict:
    return {
        "format": checkpoint.FORMAT,
        "arch": cfg.arch,
        "input_side": models.get(cfg.arch).input_side,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
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
                   "time_budget": cfg.time_budget, "precision": cfg.precision,
                   "channels_last": cfg.channels_last, "world_size": world.size,
                   "device": cfg.device.type},
        "torch_version": str(torch.__version__),
    }


def _restore(ckpt: dict, net: nn.Module, optimizer, scheduler, scaler, world: World,
             device: torch.device) -> Progress:
    """Continue from a checkpoint loaded to the CPU: load_state_dict copies model and optimizer
    state to the parameters' device, and torch.set_rng_state accepts only a CPU tensor."""
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    _restore_rng(ckpt["rng"], world, device)
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
    recipe, device = cfg.recipe, cfg.device
    spec = models.get(cfg.arch)
    torch.manual_seed(cfg.seed)
    net = models.build(cfg.arch)
    xavier_init(net)
    net.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    torch.manual_seed(cfg.seed + world.rank)  # dropout and augmentation differ across ranks
    preprocess = Preprocess(spec.input_side)
    optimizer = make_optimizer(net, recipe)
    n_train = min(cfg.limit_train or len(data.train_labels), len(data.train_labels))
    steps_per_epoch = n_train // recipe.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{cfg.arch}: {n_train} training images make no batch of "
                         f"{recipe.batch_size}; raise --limit-train or lower --batch-size")
    n_eval = min(cfg.eval_images or len(data.test_labels), len(data.test_labels))
    test_images, test_labels = data.test_images[:n_eval], data.test_labels[:n_eval]
    clock = BudgetClock(cfg.time_budget, n_eval)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch, clock.fraction()))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    ckdir = checkpoint.checkpoint_dir(cfg.artifacts, cfg.arch)
    if ckpt is not None:
        progress = _restore(ckpt, net, optimizer, scheduler, scaler, world, device)
        log.info("%s: resuming at epoch %d, step %d", cfg.arch, progress.epoch, progress.step)
    else:
        progress = Progress(run_id=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    best_floor = _previous_best(ckdir / "best.pt") if world.is_main else -1.0
    if cfg.time_budget is not None:  # what an evaluation will cost, before the first one
        probe = probe_images(spec.input_side, n_eval, cfg.eval_batch_size)
        for _ in range(2):  # the first call warms up (kernels, caches); the second is timed
            clock.timed_evaluation(lambda: evaluate(
                net, preprocess, test_images[:probe], test_labels[:probe], batch_size=probe,
                precision=cfg.precision, channels_last=cfg.channels_last, world=world), probe)
        log.info("%s: evaluating %d test images takes ~%.1f s (timed on %d): training stops "
                 "that much before the %g s budget's end (at most half of it)", cfg.arch, n_eval,
                 n_eval * clock.eval_s_per_image, probe, cfg.time_budget)
    model = (nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda"
                                                 else None) if world.distributed else net)
    metrics_file = runs_dir(cfg.artifacts, cfg.arch) / f"{progress.run_id}.jsonl"

    def save(evaluated: bool) -> None:
        nonlocal best_floor
        rng = all_gather(world, rng_state(device))  # a collective: every rank takes part
        if not world.is_main:
            return
        state = _checkpoint_dict(cfg, net, optimizer, scheduler, scaler, progress, world, rng)
        checkpoint.save_atomic(state, ckdir / "last.pt")
        if evaluated and progress.test_accuracy > best_floor:
            checkpoint.save_atomic(state, ckdir / "best.pt")
            best_floor = progress.test_accuracy

    log.info("%s: %d train images, %d steps/epoch of %d, recipe %s (lr %g, %s schedule), "
             "evaluation on %d test images, %s on %s%s", cfg.arch, n_train, steps_per_epoch,
             recipe.batch_size, cfg.recipe_name, recipe.lr, recipe.schedule, n_eval,
             cfg.precision, device, ", channels-last" if cfg.channels_last else "")
    started = clock.started
    stop_reason = None
    with StopRequest() as stop:
        while progress.epoch < recipe.epochs and stop_reason is None:
            stop_reason = _train_epoch(cfg, model, preprocess, optimizer, scheduler, scaler, data,
                                       n_train, steps_per_epoch, progress, world, stop, clock,
                                       progress_bar)
            if stop_reason == "interrupted":
                save(evaluated=False)
                break
            progress.test_accuracy = clock.timed_evaluation(lambda: evaluate(
                net, preprocess, test_images, test_labels,
                batch_size=cfg.eval_batch_size, precision=cfg.precision,
                channels_last=cfg.channels_last, world=world))
            progress.best_test_accuracy = max(progress.best_test_accuracy, progress.test_accuracy)
            record = _epoch_record(cfg, progress, steps_per_epoch, optimizer, n_eval)
            if world.is_main:
                progress.metrics.append(record)
                append_jsonl(metrics_file, record)
                plot_curves(progress.metrics, runs_dir(cfg.artifacts, cfg.arch) / "curves.png",
                            f"{cfg.arch} ({cfg.recipe_name} recipe, {cfg.precision}, {device.type})")
                log.info("%s epoch %.2f: loss %.3f, train acc %.3f, test acc %.4f, %.0f ex/s",
                         cfg.arch, record["epoch_float"], record["train_loss"],
                         record["train_acc"], record["test_acc"], record["examples_per_s"])
            if stop_reason is None:  # a whole epoch: the next one starts from scratch
                progress.epoch += 1
                progress.epoch_step = 0
                progress.epoch_loss = progress.epoch_correct = progress.epoch_seen = 0.0
                progress.epoch_seconds = 0.0
            save(evaluated=True)
    if world.distributed:
        torch.distributed.barrier()
    return {"arch": cfg.arch, "recipe": cfg.recipe_name, "epochs": _epoch_float(progress,
            steps_per_epoch), "test_acc": progress.test_accuracy,
            "best_acc": progress.best_test_accuracy, "seconds": progress.train_seconds,
            "examples_per_s": progress.metrics[-1]["examples_per_s"] if progress.metrics else None,
            "stopped": stop_reason or "done", "elapsed": time.perf_counter() - started,
            "eval_images": n_eval}


def _epoch_float(progress: Progress, steps_per_epoch: int) -> float:
    return progress.epoch + progress.epoch_step / steps_per_epoch


def _epoch_record(cfg: TrainConfig, progress: Progress, steps_per_epoch: int, optimizer,
                  eval_images: int) -> dict:
    seen = max(progress.epoch_seen, 1.0)
    return {
        "arch": cfg.arch, "epoch": progress.epoch + 1,
        "epoch_float": round(_epoch_float(progress, steps_per_epoch), 4),
        "partial": progress.epoch_step < steps_per_epoch, "step": progress.step,
        "train_loss": progress.epoch_loss / seen, "train_acc": progress.epoch_correct / seen,
        "test_acc": progress.test_accuracy, "test_images": eval_images,
        "examples_per_s": progress.epoch_seen / max(progress.epoch_seconds, 1e-9),
        "epoch_seconds": progress.epoch_seconds, "train_seconds": progress.train_seconds,
        "lr": optimizer.param_groups[0]["lr"], "precision": cfg.precision,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _train_epoch(cfg, model, preprocess, optimizer, scheduler, scaler, data, n_train,
                 steps_per_epoch, progress, world, stop, clock, progress_bar) -> str | None:
    """Steps through the rest of the current epoch; returns why it stopped early, or None."""
    recipe, device = cfg.recipe, cfg.device
    perm = epoch_permutation(cfg.seed, progress.epoch, n_train).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    model.train()
    bar = tqdm(total=steps_per_epoch, initial=progress.epoch_step, unit="step", leave=False,
               desc=f"{cfg.arch} epoch {progress.epoch + 1}/{recipe.epochs}",
               disable=not (world.is_main and progress_bar), dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t0 = time.perf_counter()
    reason = None
    for i in range(progress.epoch_step, steps_per_epoch):
        idx = batch_slice(perm, i, recipe.batch_size, world)
        images, labels = data.train_images[idx], data.train_labels[idx]
        if recipe.augment:
            images = shift_and_flip(images)
        loss, hits = train_step(model, preprocess, optimizer, images, labels,
                                precision=cfg.precision, channels_last=cfg.channels_last,
                                label_smoothing=recipe.label_smoothing, scaler=scaler)
        scheduler.step()
        loss_sum += loss
        correct += hits
        seen += len(idx)
        progress.step += 1
        progress.epoch_step = i + 1
        bar.update()
        if bar.n % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                            ex_s=f"{seen * world.size / (time.perf_counter() - t0):.0f}")
        over_budget = clock.spent()
        if world.distributed or stop.requested or over_budget:
            halt = broadcast_flag(world, stop.requested or over_budget)
            if halt:
                reason = "interrupted" if stop.requested else "time budget"
                break
    bar.close()
    totals = all_reduce_sum(world, loss_sum, correct, torch.tensor(float(seen)))
    seconds = time.perf_counter() - t0
    progress.epoch_loss += float(totals[0])
    progress.epoch_correct += float(totals[1])
    progress.epoch_seen += float(totals[2])
    progress.epoch_seconds += seconds
    progress.train_seconds += seconds
    return reason
