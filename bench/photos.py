"""`make bench-photos`: test images sent as users send photos, against the same images' raw pixels.

Each of the first --images test images is rendered as a photo would arrive: enlarged to a random
side of 256-512 pixels (bicubic), made RGB with a random pale tint, inverted to a dark object on
a light background, and saved as JPEG (quality 90). Every served model then classifies them
through the real server (`python -m server` as its own process, fmnist.v1 Classify with the
encoded bytes, so server/dataplane/imagefile.py does all the work) and the same images' 784 raw bytes. The
target: photo accuracy within 1 point of raw accuracy for every model.

    python -m bench.photos [--models lenet_bn resnet18] [--images 2000] [--models-dir DIR]

Prints raw and photo accuracy per model with the CPU model; results also go to
$ARTIFACTS/bench/photos.json (bench/results.py).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import model_contract as contract
from bench import results
from bench.serve import ServerProcess, pick_models

REPO = Path(__file__).resolve().parent.parent
TARGET_POINTS = 1.0  # photo accuracy may trail raw accuracy by at most this many points
SIDES = (256, 512)
QUALITY = 90


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.photos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="models to measure (default: every model in --models-dir)")
    p.add_argument("--models-dir", type=Path,
                   help="exported models (default: $ARTIFACTS/models)")
    p.add_argument("--images", type=int, default=2000,
                   help="the first N test images (default: 2000; all 10,000 take 5x longer)")
    p.add_argument("--data-dir", type=Path,
                   help="Fashion-MNIST folder (default: the trainer's: $FASHION_MNIST_DIR, ...)")
    p.add_argument("--seed", type=int, default=0, help="seeds the photos' sizes and tints")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts())
    return p


def render_photo(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    """uint8 [28, 28] (light object on black) -> JPEG bytes of a 256-512 px RGB photo of it, a
    dark object on a light, slightly tinted background."""
    side = int(rng.integers(SIDES[0], SIDES[1] + 1))
    big = np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC))
    tint = rng.uniform(0.85, 1.0, size=3)  # the paper/light colour, per channel
    rgb = np.clip(np.rint((255.0 - big.astype(np.float32))[..., None] * tint), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def classify_all(stub, model: str, images: list, chunk: int, timeout: float = 120.0) -> np.ndarray:
    """Top-1 class of each image (pb.Image messages), in requests of `chunk` images."""
    from fmnist.v1 import classifier_pb2 as pb
    out = []
    for start in range(0, len(images), chunk):
        request = pb.ClassifyRequest(model=model, top_k=1, images=images[start:start + chunk])
        response = stub.Classify(request, timeout=timeout)
        out += [c.predictions[0].class_id for c in response.classifications]
    return np.asarray(out)


def load_test_set(data_dir: Path | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    from trainer import data as fmnist  # torch, for the one loader every part shares
    ds = fmnist.load(data_dir)
    n = min(n, len(ds.test_labels))
    return ds.test_images[:n, 0].numpy(), ds.test_labels[:n].numpy()


def measure(port: int, names: list[str], pixels: np.ndarray, labels: np.ndarray,
            photos: list[bytes]) -> list[dict]:
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc
    raw = [pb.Image(raw=p.tobytes()) for p in pixels]
    encoded = [pb.Image(encoded=b) for b in photos]
    rows = []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]) as ch:
        stub = classifier_pb2_grpc.ClassifierStub(ch)
        limits = stub.ListModels(pb.ListModelsRequest(), timeout=60).limits
        # A request of 16 photos is ~0.5 MB: under every message limit the server allows.
        chunk = min(16, limits.max_images_per_request or 16)
        for name in names:
            t0 = time.perf_counter()
            raw_acc = float((classify_all(stub, name, raw, chunk) == labels).mean())
            t1 = time.perf_counter()
            photo_acc = float((classify_all(stub, name, encoded, chunk) == labels).mean())
            t2 = time.perf_counter()
            gap = 100 * (raw_acc - photo_acc)
            rows.append({"model": name, "images": len(labels), "raw_acc": raw_acc,
                         "photo_acc": photo_acc, "gap_points": round(gap, 2),
                         "met": gap <= TARGET_POINTS,
                         "raw_images_per_s": round(len(labels) / (t1 - t0), 1),
                         "photo_images_per_s": round(len(labels) / (t2 - t1), 1)})
            print(f"{name}: raw {raw_acc:.4f}, photo {photo_acc:.4f}", flush=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    table = [("model", "images", "raw acc", "photo acc", "raw - photo (points)", "within 1 pt",
              "photos/s")] + [
        (r["model"], str(r["images"]), f"{r['raw_acc']:.4f}", f"{r['photo_acc']:.4f}",
         f"{r['gap_points']:+.2f}", "yes" if r["met"] else "NO", f"{r['photo_images_per_s']:.0f}")
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def main(args: argparse.Namespace) -> int:
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 2
    models_dir = args.models_dir or args.artifacts / "models"
    chosen = pick_models(models_dir, args.models)
    pixels, labels = load_test_set(args.data_dir, args.images)
    rng = np.random.default_rng(args.seed)
    photos = [render_photo(p, rng) for p in pixels]
    print(f"{len(photos)} photos rendered, {sum(map(len, photos)) / len(photos) / 1024:.0f} KiB "
          f"each on average", flush=True)
    server = ServerProcess({n: folder / str(v) for n, (v, folder) in chosen.items()},
                           args.device, [])
    try:
        rows = measure(server.wait(), list(chosen), pixels, labels, photos)
    finally:
        rc = server.stop()
    cpu, isa = results.cpu_info()
    print(f"\nCPU: {cpu} ({len(os.sched_getaffinity(0))} CPUs); photos: {SIDES[0]}-{SIDES[1]} px "
          f"RGB JPEG q{QUALITY}, light background; through the server's decode")
    print(format_rows(rows))
    path = results.write("photos", {"rows": rows, "seed": args.seed,
                                    "photo": f"{SIDES[0]}-{SIDES[1]} px RGB JPEG q{QUALITY}, "
                                             f"tinted light background",
                                    "target_points": TARGET_POINTS}, args.artifacts)
    print(f"results: {path}")
    if rc != 0:
        print(f"error: the server exited with status {rc} after SIGTERM", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
