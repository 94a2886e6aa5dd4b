"""Writes samples/: the first image of each class in the Fashion-MNIST test set, as a PNG.

The PNGs are the dataset's own pixels (28x28, light object on black), so the server's decoder
passes them through unchanged. samples/index.json records where each one came from.
Run: python scripts/make_samples.py  (the output is committed; rerun only to regenerate)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from trainer import data


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def main(out: Path = Path("samples")) -> None:
    ds = data.load()
    out.mkdir(exist_ok=True)
    index = {}
    for class_id, label in enumerate(data.LABELS):
        i = int((ds.test_labels == class_id).nonzero()[0, 0])
        name = f"{slug(label)}.png"
        Image.fromarray(ds.test_images[i, 0].numpy(), mode="L").save(out / name)
        index[name] = {"test_index": i, "class_id": class_id, "label": label}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {len(index)} samples to {out}/ from {ds.source}")


if __name__ == "__main__":
    main()
