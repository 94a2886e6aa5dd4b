"""What the other parts left in the artifacts folder for one architecture, read as they wrote it.

- the run log `runs/<arch>/<run>.jsonl` (one record per evaluated epoch, trainer/run.py), chosen as
  the run that produced `checkpoints/<arch>/best.pt` (its `progress.run_id`), else the newest;
- the newest published export `models/<arch>/<version>/` (model_contract.py): model.onnx's
  metadata, report.json, and any `model.<variant>.onnx` beside it.

Each reader returns None plus a note (what is missing and which command makes it) instead of
raising, so one architecture's missing or broken file never stops the report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

import model_contract as contract
from trainer import checkpoint, models
from trainer.metrics import runs_dir

# What the report reads from each run record (trainer/run.py's _epoch_record writes them).
RUN_KEYS = ("epoch", "epoch_float", "train_loss", "train_acc", "test_acc", "examples_per_s",
            "epoch_seconds", "train_seconds")


@dataclass(frozen=True)
class Run:
    path: Path
    records: list[dict]  # the last record of each epoch, in epoch order

    @property
    def best(self) -> dict:
        """The epoch with the highest test accuracy: the one best.pt holds."""
        return max(self.records, key=lambda r: r["test_acc"])

    @property
    def train_seconds(self) -> float:
        return self.records[-1]["train_seconds"]

    @property
    def examples_per_s(self) -> float:
        """Over the whole run: each epoch's rate weighted by the seconds it took."""
        seconds = sum(r["epoch_seconds"] for r in self.records)
        return sum(r["examples_per_s"] * r["epoch_seconds"] for r in self.records) / seconds


@dataclass(frozen=True)
class Export:
    arch: str
    version: int
    folder: Path
    metadata: dict[str, str]          # model.onnx's metadata_props
    report: dict | None               # report.json, None when absent or unreadable
    variants: dict[str, Path]         # "int8" -> model.int8.onnx, ...
    variant_metadata: dict[str, dict[str, str]]  # per variant; {} when its file is unreadable

    @property
    def model(self) -> Path:
        return self.folder / contract.MODEL_FILE


@dataclass(frozen=True)
class Sources:
    arch: str
    spec: models.Architecture | None  # None: a folder for an architecture the registry lacks
    parameters: int | None
    floor: float | None               # d2l's accuracy, when the registry records it
    best_sha256: str | None           # of checkpoints/<arch>/best.pt, None when there is none
    run: Run | None
    run_note: str
    export: Export | None
    export_note: str


def architectures(artifacts: Path) -> list[str]:
    """The registry's architectures in its order, then any other name found in runs/ or models/
    (so a model from an older registry still shows up, marked as unknown)."""
    found = {p.name for sub in ("runs", "models") if (artifacts / sub).is_dir()
             for p in (artifacts / sub).iterdir() if p.is_dir()}
    return list(models.ARCHITECTURES) + sorted(found - set(models.ARCHITECTURES))


def read(artifacts: Path, arch: str) -> Sources:
    spec = models.ARCHITECTURES.get(arch)
    parameters = models.count_parameters(models.build(arch)) if spec else None
    # d2l's floor is in docs/DESIGN.md's table only; the report shows what the registry holds
    # (a `d2l_floor` field, once it has one) rather than a copy typed in here.
    floor = getattr(spec, "d2l_floor", None)
    best = checkpoint.checkpoint_dir(artifacts, arch) / "best.pt"
    best_sha256 = sha256_file(best) if best.is_file() else None
    run, run_note = read_run(artifacts, arch)
    export, export_note = read_export(artifacts, arch)
    return Sources(arch, spec, parameters, floor, best_sha256, run, run_note, export, export_note)


def read_run(artifacts: Path, arch: str) -> tuple[Run | None, str]:
    folder = runs_dir(artifacts, arch)
    logs = sorted(folder.glob("*.jsonl"))  # run ids are UTC timestamps: newest last
    if not logs:
        return None, f"no {folder}/*.jsonl: run `make train MODELS={arch}`"
    best_run = _best_run_id(artifacts, arch)
    path = next((p for p in logs if p.stem == best_run), logs[-1])
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        return None, f"{path} unreadable ({err})"
    lacking = sorted({k for r in records for k in RUN_KEYS if k not in r})
    if lacking:
        return None, f"{path}: records lack {', '.join(lacking)} (written by an older trainer?)"
    by_epoch = {r["epoch"]: r for r in records}  # a resumed epoch's last record holds it all
    if not by_epoch:
        return None, f"{path} holds no evaluated epoch yet"
    return Run(path, [by_epoch[e] for e in sorted(by_epoch)]), ""


def _best_run_id(artifacts: Path, arch: str) -> str | None:
    """The run that wrote best.pt, so the curves shown belong to the exported weights."""
    path = checkpoint.checkpoint_dir(artifacts, arch) / "best.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ckpt["progress"]["run_id"]
    except Exception:  # absent, or from another format: fall back to the newest run
        return None


def read_export(artifacts: Path, arch: str) -> tuple[Export | None, str]:
    arch_dir = artifacts / "models" / arch
    published = [v for v in (contract.parse_version(p.name) for p in arch_dir.glob("*")
                             if p.is_dir()) if v is not None] if arch_dir.is_dir() else []
    if not published:
        best = checkpoint.checkpoint_dir(artifacts, arch) / "best.pt"
        make = (f"`make export MODELS={arch}`" if best.exists()
                else f"`make train MODELS={arch}`, then `make export MODELS={arch}`")
        return None, f"no {arch_dir}/<version>/{contract.MODEL_FILE}: run {make}"
    version = max(published)
    folder = arch_dir / str(version)
    try:
        meta = read_metadata(folder / contract.MODEL_FILE)
    except Exception as err:  # truncated or foreign file: say so, keep going
        return None, f"{folder / contract.MODEL_FILE} unreadable ({type(err).__name__}: {err})"
    try:
        report = json.loads((folder / contract.REPORT_FILE).read_text())
    except (OSError, ValueError):
        report = None
    variants = {p.name[len("model."):-len(".onnx")]: p for p in sorted(folder.glob("model.*.onnx"))}
    return Export(arch, version, folder, meta, report, variants,
                  {name: _metadata_or_empty(path) for name, path in variants.items()}), ""


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata_or_empty(path: Path) -> dict[str, str]:
    """A variant's metadata is extra information: an unreadable one shows up when it is run."""
    try:
        return read_metadata(path)
    except Exception:
        return {}
