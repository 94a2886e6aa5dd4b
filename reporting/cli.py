"""`python -m reporting` (`make report`): build the static HTML report of an artifacts folder.

It reads runs/, checkpoints/, models/ and bench/ and runs each served model.onnx on the test set
(onnxruntime, CPU) for its confusion matrix; then open <out>/index.html in a browser. Predictions
are cached in <out>/.cache, so a second build only measures models exported since.

Examples:
    python -m reporting                                   # artifacts/ -> artifacts/report/
    python -m reporting --artifacts /tmp/run1 --test-images 2000
    make report ARTIFACTS=/tmp/run1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reporting.build import build


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reporting", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS", "artifacts")),
                   help="folder with runs/, checkpoints/, models/ and bench/ (default: $ARTIFACTS "
                        "or artifacts)")
    p.add_argument("--out", type=Path,
                   help="folder to write index.html, the card pages and img/ into "
                        "(default: <artifacts>/report)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with the four Fashion-MNIST idx(.gz) files (default: "
                        "$FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist; never "
                        "downloads: without data the report builds without confusion matrices)")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="run each model on the first N test images only (default: all 10,000; "
                        "the 224-px models take a few minutes each on 2 CPU cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> int:
    if args.test_images is not None and args.test_images < 1:
        print("error: --test-images must be at least 1", file=sys.stderr)
        return 2
    if not args.artifacts.is_dir():
        print(f"error: {args.artifacts} is not a folder: run `make train` and `make export` "
              f"first, or point --artifacts at the folder that holds runs/ and models/",
              file=sys.stderr)
        return 1
    index = build(args.artifacts, args.out or args.artifacts / "report", args.data_dir,
                  args.test_images, progress=not args.no_progress)
    print(f"report: {index}")
    return 0
