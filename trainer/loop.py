"""The training step, the batch order and the evaluation: small functions the run is made of."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer.device import World, all_reduce_sum, autocast


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training set in `epoch`: a function of (seed, epoch) alone, so a resumed
    run replays exactly the batches an uninterrupted one would have seen."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_slice(perm: torch.Tensor, step: int, batch_size: int, world: World) -> torch.Tensor:
    """This rank's share of global batch `step` (the global batch is split evenly over ranks)."""
    per_rank = batch_size // world.size
    start = step * batch_size + world.rank * per_rank
    return perm[start:start + per_rank]


def to_model_input(preprocess: nn.Module, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = preprocess(images)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(net: nn.Module, preprocess: nn.Module, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, labels: torch.Tensor, *, precision: str,
               channels_last: bool, label_smoothing: float,
               scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (summed loss, number correct) as device tensors, so the caller
    decides when to synchronise with the device."""
    x = to_model_input(preprocess, images, channels_last)
    with autocast(x.device, precision):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    correct = (logits.detach().argmax(1) == labels).sum()
    return loss.detach() * len(labels), correct


@torch.inference_mode()
def evaluate(net: nn.Module, preprocess: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             *, batch_size: int, precision: str, channels_last: bool,
             world: World = World()) -> float:
    """Top-1 accuracy over the whole set (each rank takes a contiguous shard)."""
    was_training = net.training
    net.eval()
    shard = torch.arange(len(labels)).tensor_split(world.size)[world.rank]
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for chunk in shard.split(batch_size):
        chunk = chunk.to(images.device)
        x = to_model_input(preprocess, images[chunk], channels_last)
        with autocast(x.device, precision):
            correct += (net(x).argmax(1) == labels[chunk]).sum()
    net.train(was_training)
    total, hits = all_reduce_sum(world, torch.tensor(float(len(shard))), correct.cpu())
    return float(hits / total)


def xavier_init(net: nn.Module) -> None:
    """d2l's train_ch6 initialisation: Xavier-uniform weights for every Linear and Conv2d."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
