"""What the other parts left in the artifacts folder for one architecture, read as they wrote it.

- the run log `runs/<arch>/<run>.jsonl` (one record per evaluated epoch, trainer/run.py), chosen as
  the run that produced `checkpoints/<arch>/best.pt` (its `progress.run_id`), else the newest;
- what `checkpoints/<arch>/best.pt` says of its run: the epochs planned and the time budget;
- the newest published export `models/<arch>/<version>/` (model_contract.py): model.onnx's
  metadata (as `ModelMetadata`), report.json, and any `model.<variant>.onnx` beside it.

Each reader returns None plus a note (what is missing and which command makes it) instead of
raising, so one architecture's missing or broken file never stops the report.
"""

from __future__ import annotations

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
    planned_epochs: int | None = None  # the recipe's, as best.pt records it
    time_budget: float | None = None   # --time-budget of the run, seconds

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
    metadata: contract.ModelMetadata | None  # None: invalid, metadata_error says why
    metadata_error: str
    report: dict | None               # report.json, None when absent or unreadable
    variants: dict[str, Path]         # "int8" -> model.int8.onnx, ...
    variant_metadata: dict[str, contract.ModelMetadata | None]  # None: unreadable or invalid

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
    parameters = _parameters(arch) if spec else None
    floor = spec.d2l_floor if spec else None
    best = checkpoint.checkpoint_dir(artifacts, arch) / "best.pt"
    best_sha256 = contract.sha256_file(best) if best.is_file() else None
    run, run_note = read_run(artifacts, arch)
    export, export_note = read_export(artifacts, arch)
    return Sources(arch, spec, parameters, floor, best_sha256, run, run_note, export, export_note)


def _parameters(arch: str) -> int:
    """Counted on the meta device: the shapes without allocating or initialising the weights
    (1.4 s for AlexNet and VGG-11 otherwise)."""
    with torch.device("meta"):
        return models.count_parameters(models.build(arch))


def read_run(artifacts: Path, arch: str) -> tuple[Run | None, str]:
    folder = runs_dir(artifacts, arch)
    logs = sorted(folder.glob("*.jsonl"))  # run ids are UTC timestamps: newest last
    if not logs:
        return None, f"no {folder}/*.jsonl: run `make train MODELS={arch}`"
    best = _best_checkpoint(artifacts, arch)
    path = next((p for p in logs if p.stem == best.get("run_id")), logs[-1])
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
    plan = best if path.stem == best.get("run_id") else {}  # another run's plan says nothing
    return Run(path, [by_epoch[e] for e in sorted(by_epoch)], plan.get("planned_epochs"),
               plan.get("time_budget")), ""


def _best_checkpoint(artifacts: Path, arch: str) -> dict:
    """What best.pt says of the run that wrote it (run_id, planned_epochs, time_budget), so the
    curves shown belong to the exported weights; {} when it cannot say."""
    path = checkpoint.checkpoint_dir(artifacts, arch) / "best.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {"run_id": ckpt["progress"]["run_id"],
                "planned_epochs": ckpt.get("recipe", {}).get("epochs"),
                "time_budget": ckpt.get("config", {}).get("time_budget")}
    except Exception:  # absent, or from another format: fall back to the newest run
        return {}


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
        props = read_metadata(folder / contract.MODEL_FILE)
    except Exception as err:  # truncated or foreign file: say so, keep going
        return None, f"{folder / contract.MODEL_FILE} unreadable ({type(err).__name__}: {err})"
    meta, error = parse_metadata(props)
    try:
        report = json.loads((folder / contract.REPORT_FILE).read_text())
    except (OSError, ValueError):
        report = None
    variants = {p.name[len("model."):-len(".onnx")]: p for p in sorted(folder.glob("model.*.onnx"))}
    return Export(arch, version, folder, meta, error, report, variants,
                  {name: _variant_metadata(path) for name, path in variants.items()}), ""


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def parse_metadata(props: dict[str, str]) -> tuple[contract.ModelMetadata | None, str]:
    """The typed record, or None and the MetadataError's words (which the card shows)."""
    try:
        return contract.ModelMetadata.from_props(props), ""
    except contract.MetadataError as err:
        return None, str(err)


def _variant_metadata(path: Path) -> contract.ModelMetadata | None:
    """A variant's metadata is extra information: an unreadable one shows up when it is run."""
    try:
        return parse_metadata(read_metadata(path))[0]
    except Exception:
        return None
