"""Where and in what precision to train: device choice, autocast, and torchrun's process group.

Mixed precision is chosen where it pays: bfloat16 autocast on CPUs with native bf16 (AVX-512 BF16
or AMX run it 2-4x faster than fp32), bfloat16 on CUDA GPUs that have it, float16 with a
GradScaler on older GPUs. Everything else trains in fp32.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (Linux flags: avx512_bf16 or amx_bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error, not a fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}); use --device cpu or auto")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise UsageError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UsageError("fp16 autocast is for CUDA; on the CPU use bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    backend: str = ""  # the process group's ("nccl", "gloo"); "" without torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a torchrun process group: the collectives run through it, even with one rank
        (so `torchrun --nproc_per_node=1` exercises nccl on a single GPU)."""
        return bool(self.backend)


def init_world(device: torch.device) -> World:
    """Join torchrun's process group when launched by it (it sets WORLD_SIZE): nccl on GPUs,
    gloo on CPUs."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dist.get_backend())


def group_device() -> torch.device:
    """Where the process group's collectives run: nccl takes CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(world: World, *values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors (on any devices) over ranks in one call, as float64 CPU values; identity in a
    single process."""
    if not world.distributed:
        return list(values)
    on = group_device()
    flat = torch.stack([v.detach().to(on, torch.float64) for v in values])
    dist.all_reduce(flat)
    return list(flat.cpu().unbind())


def all_gather(world: World, obj):
    """Every rank's `obj` (picklable), in rank order; [obj] in a single process."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(world: World, flag: bool) -> bool:
    """Rank 0's decision for everyone, so all ranks stop at the same step."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=group_device())
    dist.broadcast(t, src=0)
    return bool(t.item())
