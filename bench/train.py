"""`make bench-train`: the seeds' training loop against ours, same architecture and batch, one run.

The seeds' loop (d2l's train_ch6 with load_data_fashion_mnist): torchvision's FashionMNIST dataset
with PIL `Resize` + `ToTensor` per image in a DataLoader, fp32, a host sync per batch for the
metrics. Ours: the uint8 dataset on the device, batches by indexing, preprocessing as one batched
op, bf16 autocast where the CPU has it, channels-last per architecture. A middle column, ours in
fp32 without channels-last, separates what the data path buys from what bf16 and the memory
format buy. The figures are printed and written to <artifacts>/bench/train.json (bench/results.py),
where `make report` finds them.

    python -m bench.train [--models resnet18 alexnet] [--steps 6] [--workers 2] [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import model_contract as contract
from bench import results
from cli_text import format_table
from trainer import data as fmnist
from trainer import models
from trainer.device import resolve_precision
from trainer.loop import train_step, xavier_init
from trainer.preprocess import Preprocess


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "alexnet"],
                   choices=list(models.ARCHITECTURES), metavar="NAME",
                   help="architectures to measure (default: resnet18 alexnet)")
    p.add_argument("--steps", type=int, default=6,
                   help="timed optimizer steps per loop, after 2 warm-up steps (default: 6)")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers for the seeds' loop (the seeds use 0 to 4; default 2)")
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST folder (default: as the trainer)")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="writes the result to its bench/train.json (default: $ARTIFACTS or "
                        "artifacts)")
    return p


def torchvision_root(data_dir: Path | None, tmp: Path) -> Path:
    """torchvision's FashionMNIST wants root/FashionMNIST/raw/<uncompressed idx files>."""
    source = fmnist.resolve_source(data_dir)
    if source is None:
        return fmnist.DOWNLOAD_ROOT  # torchvision downloads into it
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in fmnist.FILES.values():
        path = source / f"{stem}.gz"
        if path.exists():
            with gzip.open(path) as src, open(raw / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(source / stem, raw / stem)
    return tmp


def seeds_loop(arch: str, root: Path, steps: int, workers: int) -> float:
    """d2l's train_ch6 inner loop, as the seeds run it; returns examples/second."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    spec, recipe = models.get(arch), models.get(arch).recipes["d2l"]
    trans = transforms.Compose([transforms.Resize(spec.input_side), transforms.ToTensor()])
    train_set = datasets.FashionMNIST(root=str(root), train=True, transform=trans, download=True)
    loader = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    net = models.build(arch)
    xavier_init(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    metric = [0.0, 0.0, 0]
    start, seen = None, 0
    for i, (x, y) in enumerate(loader):
        if i == 2:
            start, seen = time.perf_counter(), 0
        optimizer.zero_grad()
        y_hat = net(x)
        loss = loss_fn(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # d2l's Accumulator: a host sync every batch
            metric[0] += float(loss * x.shape[0])
            metric[1] += float((y_hat.argmax(1) == y).sum())
            metric[2] += x.shape[0]
        seen += x.shape[0]
        if i == steps + 1:
            break
    return seen / (time.perf_counter() - start)


def our_loop(arch: str, ds: fmnist.FashionMNIST, steps: int, precision: str) -> float:
    spec, recipe = models.get(arch), models.get(arch).recipes["d2l"]
    torch.manual_seed(0)
    net = models.build(arch)
    xavier_init(net)
    channels_last = spec.channels_last and precision != "fp32"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr)
    preprocess = Preprocess(spec.input_side)
    perm = torch.randperm(len(ds.train_labels))
    seen, start = 0, None
    for i in range(steps + 2):
        if i == 2:
            start, seen = time.perf_counter(), 0
        idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
        loss, _ = train_step(net, preprocess, optimizer, ds.train_images[idx],
                             ds.train_labels[idx], precision=precision,
                             channels_last=channels_last, label_smoothing=0.0, scaler=None)
        seen += len(idx)
    loss.item()
    return seen / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    precision = resolve_precision("auto", torch.device("cpu"))
    ds = fmnist.load(args.data_dir)
    print(f"CPU, {torch.get_num_threads()} threads; data from {ds.source}; "
          f"{args.steps} timed steps per loop; ours in {precision}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(args.data_dir, Path(tmp))
        for arch in args.models:
            batch = models.get(arch).recipes["d2l"].batch_size
            print(f"{arch}: seeds' loop ...", flush=True)
            seeds = seeds_loop(arch, root, args.steps, args.workers)
            print(f"{arch}: ours, fp32 ...", flush=True)
            ours32 = our_loop(arch, ds, args.steps, "fp32")
            print(f"{arch}: ours, {precision} ...", flush=True)
            ours = our_loop(arch, ds, args.steps, precision)
            rows.append({"arch": arch, "batch": batch, "precision": precision,
                         "seeds_examples_per_s": seeds, "ours_fp32_examples_per_s": ours32,
                         "ours_examples_per_s": ours, "speedup_fp32": ours32 / seeds,
                         "speedup": ours / seeds})
    print()
    print(format_table(rows, [("arch", "arch", ""), ("batch", "batch", "d"),
                              ("seeds_examples_per_s", "seeds ex/s", ".1f"),
                              ("ours_fp32_examples_per_s", "ours fp32 NCHW ex/s", ".1f"),
                              ("ours_examples_per_s", f"ours {precision} ex/s", ".1f"),
                              ("speedup_fp32", "fp32 ratio", ".2f"), ("speedup", "ratio", ".2f")]))
    path = results.write("train", {"steps": args.steps, "workers": args.workers,
                                   "threads": torch.get_num_threads(), "data": ds.source,
                                   "rows": rows}, args.artifacts)
    print(f"written: {path}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
