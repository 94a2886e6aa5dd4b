"""Step 2: `python -m trainer` on the device: every architecture for a fixed time budget (its
examples/s beside d2l's published GPU figure), `--resume` from a last.pt against an uninterrupted
run, and `torchrun --nproc_per_node=1` through an epoch end.

The resume check stops a run after one step (--time-budget 0: last.pt mid-epoch), resumes it to
the epoch's end, and compares its last.pt weights with a run that was never stopped. On a GPU the
two can differ without a resume bug, when cuDNN picks kernels that add in a varying order: then a
second uninterrupted run measures that noise, and the resumed run must stay within it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gpu_check.kit import Kit, Ran
from gpu_check.record import PASSED, Check, passed_if

TRAINER = ["-m", "trainer"]
# "resnet18 epoch 1/1: ..." for a whole epoch (trainer/run.py _record_epoch)
WHOLE_EPOCH = "{arch} epoch 1/1: "


def train_all(kit: Kit) -> list[Check]:
    """Every architecture in one trainer process, `plan.train_seconds` each."""
    p, root = kit.plan, kit.work / "train"
    args = [*TRAINER, "--models", *kit.archs, "--device", p.device, "--precision", p.precision,
            "--time-budget", str(p.train_seconds), "--eval-images", str(p.eval_images),
            "--no-progress", "--artifacts", str(root)]
    args += ["--batch-size", str(p.train_batch)] if p.train_batch else []
    args += ["--limit-train", str(p.train_limit)] if p.train_limit else []
    ran = kit.run("train", args, cap=len(kit.archs) * (p.train_seconds + 30) + 60)
    return [_trained(kit, arch, root, ran) for arch in kit.archs]


def _trained(kit: Kit, arch: str, root: Path, ran: Ran) -> Check:
    from trainer import models

    record = last_record(root, arch)
    best = root / "checkpoints" / arch / "best.pt"
    if record is None or not best.is_file():
        return kit.failed("train", f"train {arch}", ran, "no best.pt or metrics")
    d2l = models.get(arch).d2l_gpu_examples_per_s
    speed = record["examples_per_s"]
    figures = {"examples_per_s": round(speed, 1), "d2l_gpu_examples_per_s": d2l,
               "ratio_to_d2l": round(speed / d2l, 3) if d2l else None,
               "steps": record["step"], "precision": record["precision"],
               "test_acc": record["test_acc"], "test_images": record["test_images"],
               "device": kit.plan.device}
    versus = (f" = {speed / d2l:.2f}x d2l's {d2l:,.0f} on its GPU" if d2l
              else " (d2l prints no GPU figure)")
    return Check("train", f"train {arch}", PASSED,
                 f"{speed:,.0f} examples/s on {kit.plan.device}{versus}, {record['step']} steps",
                 figures)


def last_record(artifacts: Path, arch: str) -> dict | None:
    """The last metrics record of `arch`'s newest run (runs/<arch>/<run id>.jsonl)."""
    files = sorted((artifacts / "runs" / arch).glob("*.jsonl"))
    if not files:
        return None
    lines = files[-1].read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


def _short_run(kit: Kit, artifacts: Path) -> list[str]:
    """One epoch of `plan.resume_arch` on `plan.resume_limit` images, into `artifacts`."""
    p = kit.plan
    return ["--models", _resume_arch(kit), "--epochs", "1", "--limit-train", str(p.resume_limit),
            "--batch-size", str(p.resume_batch), "--eval-images", str(p.eval_images),
            "--device", p.device, "--precision", p.precision, "--no-progress",
            "--artifacts", str(artifacts)]


def _resume_arch(kit: Kit) -> str:
    return kit.plan.resume_arch if kit.plan.resume_arch in kit.archs else kit.archs[0]


def resume(kit: Kit) -> list[Check]:
    """Stopped after one step, resumed to the epoch's end, against a run never stopped."""
    arch, root = _resume_arch(kit), kit.work / "resume"
    runs = [kit.run("resume-whole", [*TRAINER, *_short_run(kit, root / "whole")], 180),
            kit.run("resume-stop", [*TRAINER, *_short_run(kit, root / "parts"),
                                    "--time-budget", "0"], 180),
            kit.run("resume-resume", [*TRAINER, *_short_run(kit, root / "parts"), "--resume"], 180)]
    bad = next((r for r in runs if r.rc != 0), None)
    if bad is not None:
        return [kit.failed("resume", f"--resume {arch}", bad, bad.log.name)]
    said = re.search(r"resuming at epoch 0, step 1\b", runs[2].output) is not None
    diff, steps = weights_difference(root / "whole", root / "parts", arch)
    figures = {"arch": arch, "max_abs_diff": diff, "steps": steps, "resumed_at_step_1": said}
    if diff == 0.0 or not kit.plan.cuda:
        return [Check("resume", f"--resume {arch}", passed_if(diff == 0.0 and said),
                      f"last.pt after {steps} steps, resumed at step 1: max |Δ weight| {diff:.3g} "
                      "against the run never stopped", figures)]
    again = kit.run("resume-whole-again", [*TRAINER, *_short_run(kit, root / "whole-again")], 180)
    noise, _ = weights_difference(root / "whole", root / "whole-again", arch)
    figures["run_to_run_noise"] = noise
    ok = again.rc == 0 and said and 0 < noise and diff <= 10 * noise
    return [Check("resume", f"--resume {arch}", passed_if(ok),
                  f"max |Δ weight| {diff:.3g} against the run never stopped; two runs never "
                  f"stopped differ by {noise:.3g} (nondeterministic GPU kernels)", figures)]


def weights_difference(a: Path, b: Path, arch: str) -> tuple[float, int]:
    """max |Δ| over every tensor of two last.pt files' models, and their step (which must match:
    else inf)."""
    from trainer import checkpoint

    x, y = (checkpoint.load(d / "checkpoints" / arch / "last.pt") for d in (a, b))
    if x["step"] != y["step"] or x["model"].keys() != y["model"].keys():
        return float("inf"), x["step"]
    diff = max((float((x["model"][k].float() - y["model"][k].float()).abs().max())
                for k in x["model"] if x["model"][k].numel()), default=0.0)
    return diff, x["step"]


def torchrun(kit: Kit) -> list[Check]:
    """`torchrun --nproc_per_node=1 -m trainer` through an epoch end, and whether its process
    group was joined (nccl on CUDA, with NCCL's own log on; gloo in the CPU rehearsal)."""
    arch = _resume_arch(kit)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    ran = kit.run("torchrun", [*launcher, *TRAINER, *_short_run(kit, kit.work / "torchrun")], 240,
                  env={"NCCL_DEBUG": "INFO"})
    ended = WHOLE_EPOCH.format(arch=arch) in ran.output
    if ran.out_of_time:
        return [kit.failed("torchrun", f"torchrun --nproc_per_node=1 {arch}", ran, "")]
    checks = [Check("torchrun", f"torchrun --nproc_per_node=1 {arch}",
                    passed_if(ran.rc == 0 and ended),
                    f"exit {ran.rc}, " + ("an epoch ended" if ended else "no epoch end logged"),
                    {"rc": ran.rc, "seconds": round(ran.seconds, 1)})]
    backend = "nccl" if kit.plan.cuda else "gloo"  # the CPU rehearsal shows the same path
    joined = f"in a {backend} process group" in ran.output
    if kit.plan.cuda:
        joined = joined and "NCCL INFO" in ran.output
    checks.append(Check("torchrun", f"{backend} process group", passed_if(joined),
                        f"{backend} initialised, the epoch's reductions ran through it" if joined
                        else f"no {backend} process group was joined (trainer/device.py "
                             "init_world)"))
    return checks
