"""`make demo`: quick-train every architecture, export, serve, classify samples/, in about 10 minutes.

    python scripts/demo.py                       # what `make demo` runs after `make install`
    python scripts/demo.py --budget 50 --precision fp32 --models lenet_bn resnet18

The time goes where it buys accuracy. One table, keyed by the registry's input side, says how
each architecture's share of the budget compares with the others', on how many test images it is
evaluated while training and parity-checked when exported (a 224-pixel network costs ~60x a
28-pixel one per image), and its batch size. Measured on 2 CPU cores: 28-pixel LeNets reach
0.85-0.89 in half a minute; 96-pixel ResNet-18 and DenseNet need a minute or two for 0.80; the
224-pixel networks cannot get far in any budget a demo can afford (40-180 images/s), so they get
a little and the summary says they are near chance.

Steps: `python -m trainer` once per input side (the improved recipe with the time-based "budget"
schedule, evaluation included in the budget), `python -m exporter` once per input side (with
--test-images), then scripts/demo_classify.py's server-and-client round. It prints the samples
each model got right, a per-model summary (which models are near chance, and why), and how long
each step took. Exit status 0 only if every step worked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "scripts"):  # works without the venv's .pth too
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import demo_classify  # noqa: E402
from trainer import models  # noqa: E402  (the registry; torch is imported, no network built)
from cli_text import format_table  # noqa: E402
from model_contract import default_artifacts  # noqa: E402

CHANCE = 0.10
NEAR_CHANCE = 0.25  # below this a model has not learned enough to be worth reading


@dataclass(frozen=True)
class SidePlan:
    """What the demo gives every architecture of one input side."""

    weight: float  # its share of the training budget, relative to the other sides'
    recipe: str  # the trainer's --recipe; the schedule is always "budget"
    test_images: int  # evaluated on while training, and parity-checked on when exported
    batch_size: int | None  # None: the recipe's


# The LeNets run thousands of images a second: several epochs of the improved recipe (Nesterov
# momentum) in 20-30 s. The others see a few thousand images at most, so batch 32 (more, smaller
# steps beat fewer big ones in a run this short) with the d2l recipe's plain SGD, whose rates the
# old 25-second demo showed to be stable at batch 32 (resnet18/densenet ~0.82 with bf16).
PLAN_BY_SIDE = {
    28: SidePlan(weight=0.8, recipe="improved", test_images=10_000, batch_size=None),
    96: SidePlan(weight=2.0, recipe="d2l", test_images=1_000, batch_size=32),
    224: SidePlan(weight=0.3, recipe="d2l", test_images=200, batch_size=32),
}
EPOCHS = 100  # an upper bound: the time budget ends every demo run


def plan(names: list[str], mean_budget: float) -> dict[str, dict]:
    """Per architecture: its seconds (the weights scaled so they average `mean_budget`), test
    images and batch size, from its input side."""
    sides = {n: models.get(n).input_side for n in names}
    total_weight = sum(PLAN_BY_SIDE[s].weight for s in sides.values())
    scale = mean_budget * len(names) / total_weight
    return {n: {"side": s, "budget": round(PLAN_BY_SIDE[s].weight * scale, 1),
                "recipe": PLAN_BY_SIDE[s].recipe, "test_images": PLAN_BY_SIDE[s].test_images,
                "batch_size": PLAN_BY_SIDE[s].batch_size} for n, s in sides.items()}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/demo.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(models.ARCHITECTURES)
    p.add_argument("--models", nargs="+", default=names, choices=names, metavar="NAME",
                   help=f"architectures (default: all: {' '.join(names)})")
    p.add_argument("--budget", type=float, default=35.0,
                   help="mean seconds of training (its evaluations included) per architecture; "
                        "each gets its input side's share (default: 35, so 280 s for all 8)")
    p.add_argument("--limit-train", type=int, metavar="N",
                   help="train on the first N training images only (default: all 60,000)")
    p.add_argument("--batch-size", type=int, help="one batch size for all (default: per side)")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="one evaluation/parity subset for all (default: per side, 200-10,000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="training precision (auto: bf16 where the CPU or GPU has it, else fp32)")
    p.add_argument("--artifacts", type=Path, default=default_artifacts())
    p.add_argument("--samples", type=Path, default=REPO / "samples")
    p.add_argument("--started", type=float,
                   help="epoch seconds when `make demo` began, so set-up shows in the step times")
    return p


def groups(per_arch: dict[str, dict], args) -> list[tuple[list[str], dict]]:
    """Architectures that share every setting run in one trainer/exporter process."""
    out: dict[tuple, list[str]] = {}
    for name, p in per_arch.items():
        key = (p["budget"], p["recipe"], args.test_images or p["test_images"],
               args.batch_size or p["batch_size"])
        out.setdefault(key, []).append(name)
    return [(names, dict(zip(("budget", "recipe", "test_images", "batch_size"), key)))
            for key, names in out.items()]


def train_command(names: list[str], g: dict, args) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "--models", *names, "--recipe", g["recipe"],
           "--schedule", "budget", "--epochs", str(EPOCHS),
           "--time-budget", str(g["budget"]), "--eval-images", str(g["test_images"]),
           "--device", args.device, "--precision", args.precision,
           "--artifacts", str(args.artifacts), "--no-progress"]
    if g["batch_size"]:
        cmd += ["--batch-size", str(g["batch_size"])]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    return cmd


def export_command(names: list[str], g: dict, args) -> list[str]:
    return [sys.executable, "-m", "exporter", "--models", *names, "--artifacts",
            str(args.artifacts), "--test-images", str(g["test_images"]), "--no-progress"]


def last_record(artifacts: Path, arch: str) -> dict | None:
    """The newest run's last epoch record (runs/<arch>/<run id>.jsonl, ids sort by time)."""
    runs = sorted((artifacts / "runs" / arch).glob("*.jsonl"))
    if not runs:
        return None
    lines = runs[-1].read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


def verdict(record: dict | None, batch_size: int) -> str:
    """One plain sentence on where the model stands and why."""
    if record is None:
        return "not trained"
    acc, seen = record["test_acc"], record["step"] * batch_size
    how = (f"{seen:,} images ({record['epoch_float']:.2f} epochs) in {record['train_seconds']:.0f} s "
           f"at {record['examples_per_s']:.0f} ex/s, {record['precision']}")
    if acc < NEAR_CHANCE:
        return f"NEAR CHANCE: {how}: too few steps for this network to start learning"
    return f"learned: {how}"


def summary_rows(per_arch: dict[str, dict], args, served: dict[str, dict]) -> list[dict]:
    rows = []
    for name, p in per_arch.items():
        rec = last_record(args.artifacts, name)
        batch = (args.batch_size or p["batch_size"]
                 or models.get(name).recipes[p["recipe"]].batch_size)
        s = served.get(name, {})
        rows.append({"arch": name, "side": p["side"], "budget": p["budget"],
                     "acc": rec["test_acc"] if rec else None,
                     "on": rec.get("test_images") if rec else None,
                     "samples": f"{s['right']}/{s['samples']}" if s else "-",
                     "why": verdict(rec, batch)})
    return rows


def run_step(label: str, cmd: list[str], times: list[tuple[str, float]]) -> None:
    print(f"\n== {label}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO)
    times.append((label, time.monotonic() - t0))
    if result.returncode != 0:
        raise demo_classify.DemoError(f"{label} failed (exit status {result.returncode})")


def classify(args, times: list[tuple[str, float]]) -> dict[str, dict]:
    print("\n== serve and classify samples/", flush=True)
    t0 = time.monotonic()
    server = demo_classify.BackgroundServer(args.artifacts / "models", args.device)
    try:
        address = server.wait_until_serving(300.0)
        rows = demo_classify.classify_samples(address, args.samples, 60.0)
    finally:
        rc = server.stop()
    times.append(("serve + classify samples/", time.monotonic() - t0))
    print(demo_classify.format_summary(rows))
    if rc != 0:
        raise demo_classify.DemoError(f"the server exited with status {rc} after SIGTERM")
    return {r["model"]: r for r in rows}


def main(args: argparse.Namespace) -> int:
    begun = time.time()
    times: list[tuple[str, float]] = []
    if args.started:
        times.append(("set-up (make install)", begun - args.started))
    per_arch = plan(args.models, args.budget)
    served, failure = {}, None
    try:
        for names, g in groups(per_arch, args):
            run_step(f"train {' '.join(names)} ({g['budget']:g} s each)",
                     train_command(names, g, args), times)
        for names, g in groups(per_arch, args):
            run_step(f"export {' '.join(names)} (parity on {g['test_images']})",
                     export_command(names, g, args), times)
        served = classify(args, times)
    except (demo_classify.DemoError, demo_classify.predict.ClientError) as e:
        failure = str(e)
    print()
    rows = summary_rows(per_arch, args, served)
    print(format_table(rows, [("arch", "arch", ""), ("side", "side", "d"),
                              ("budget", "budget s", ".0f"), ("acc", "test acc", ".3f"),
                              ("on", "on images", "d"), ("samples", "samples", "")]))
    for r in rows:
        print(f"  {r['arch']}: {r['why']}")
    total = time.time() - (args.started or begun)
    print()
    print(format_table([{"step": s, "seconds": t} for s, t in times] +
                       [{"step": "total", "seconds": total}],
                       [("step", "step", ""), ("seconds", "seconds", ".0f")]))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
