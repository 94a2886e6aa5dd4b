"""`python -m reporting` (`make report`): build the static HTML report of an artifacts folder.

It reads runs/, checkpoints/, models/ and bench/ and runs each served model.onnx on test images
(onnxruntime, CPU) for its confusion matrix and sample predictions; then open <out>/index.html in
a browser. Each model runs on as many test images as its exporter measured it on (a model near
chance on at most --near-chance-images), or on the first --test-images when given. Predictions
are cached in <out>/.cache, so a second build only measures models exported since.

Examples:
    python -m reporting                                   # artifacts/ -> artifacts/report/
    python -m reporting --artifacts /tmp/run1 --test-images 10000   # every model on all of them
    make report ARTIFACTS=/tmp/run1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import model_contract as contract
from cli_text import HelpFormatter, add_version
from reporting.build import build
from reporting.card import NEAR_CHANCE, NEAR_CHANCE_IMAGES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reporting", description=__doc__,
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="folder with runs/, checkpoints/, models/ and bench/ ($ARTIFACTS, "
                        "else artifacts)")
    p.add_argument("--out", type=Path,
                   help="folder to write index.html, the card pages and img/ into "
                        "(default: <artifacts>/report)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the four Fashion-MNIST idx(.gz) files (default: "
                        "$FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist; never "
                        "downloads: without data the report builds without confusion matrices)")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="run every model on the first N test images (default: as many as its "
                        "exporter measured it on, all 10,000 when its metadata does not say; "
                        "a 224-px model takes about 1.5 minutes per 10,000 on 2 CPU cores)")
    p.add_argument("--near-chance-images", type=int, metavar="N", default=NEAR_CHANCE_IMAGES,
                   help=f"run a model whose exported accuracy is near chance (under "
                        f"{NEAR_CHANCE:.2f}) on at most the first N test images: its confusion "
                        f"matrix says no more on all of them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> int:
    for flag, value in (("--test-images", args.test_images),
                        ("--near-chance-images", args.near_chance_images)):
        if value is not None and value < 1:
            print(f"error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    if not args.artifacts.is_dir():
        print(f"error: {args.artifacts} is not a folder: run `make train` and `make export` "
              f"first, or point --artifacts at the folder that holds runs/ and models/",
              file=sys.stderr)
        return 1
    index = build(args.artifacts, args.out or args.artifacts / "report", args.data_dir,
                  args.test_images, args.near_chance_images, progress=not args.no_progress)
    print(f"report: {index}")
    return 0
