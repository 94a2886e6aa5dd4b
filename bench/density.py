"""`make bench-density`: what each added --workers process costs in memory, with the models'
weights shared (--share-weights on, server/models/weights.py) and without, and what sharing costs
in throughput; in one run.

- Memory: `python -m server --workers N` for N in --workers (default 1 2 4) serving every model of
  the folder, once with --share-weights on and once off; once every worker serves and each model
  has answered a request of --images images (its full batch: the memory its activations take,
  which a server at rest does not hold yet), the proportional set size (PSS, /proc/PID/smaps_rollup) of the parent
  and its workers summed, and its ratio to one worker's (goal: 2 workers <= 1.5x one).
- Throughput: resnet18 and lenet_bn (those of them that are in the folder), 32 single-image
  callers over fmnist.v1 (h2load), --workers 2, sharing on against off, taking turns, side by
  side (goal: sharing costs at most 5%).

    python -m bench.density [--models-dir artifacts/models] [--workers 1 2 4] [--seconds 10]

Nothing here imports torch. Results also go to $ARTIFACTS/bench/density.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import model_contract as contract
from bench import results
from bench.serve import (ServerProcess, check_reply, measured, pick_models, requests_for,
                         sample_images)
from harness.process import scrape, tree_pss_mb

SPEED_MODELS = ("lenet_bn", "resnet18")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.density", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=contract.default_models_dir(),
                   help="exported models, all served (default: $ARTIFACTS/models)")
    p.add_argument("--artifacts", type=Path, default=contract.default_artifacts(),
                   help="where bench/density.json is written (default: $ARTIFACTS or artifacts)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4], metavar="N",
                   help="--workers settings to measure (default: 1 2 4)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="measuring time per throughput cell, after 1 s of warm-up (default: 10)")
    p.add_argument("--callers", type=int, default=32, help="throughput callers (default: 32)")
    p.add_argument("--images", type=int, default=32,
                   help="images in the request each model answers before memory is read "
                        "(default: 32, the server's --max-batch)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m server` (repeatable, e.g. "
                        "--server-arg=--max-batch=8)")
    return p


def serve(models: dict, workers: int, share: str, cache: Path, extra: list[str]) -> ServerProcess:
    folders = {n: d / str(v) for n, (v, d) in models.items()}
    server = ServerProcess(folders, "cpu", ["--workers", str(workers), "--share-weights", share,
                                            "--weights-cache", str(cache), *extra], metrics=True)
    server.wait()
    return server


def fill(server: ServerProcess, models: dict, pixels, images: int, rounds: int = 50) -> None:
    """Until every worker has answered `images` images of every model (each on a connection of
    its own, which lands on the worker the kernel picks), at most `rounds` rounds."""
    for sent in range(rounds):
        ports = worker_ports(server)
        wanting = {name for port in ports
                   for name, seen in images_served(port, models).items() if seen < images}
        if not wanting:
            print(f"  every one of {len(ports)} worker(s) answered {images} images of each "
                  f"model ({sent} round(s))", flush=True)
            return
        for name in wanting:
            check_reply(server.port, "v1", requests_for(name, models[name][0], pixels, images)["v1"])
    raise SystemExit(f"after {rounds} rounds some worker has not answered {images} images of "
                     "every model")


def worker_ports(server: ServerProcess) -> list[int]:
    """Each worker's own /metrics port (the parent logs it), or the server's with one worker."""
    ports = {}
    for line in server.log:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "worker_metrics_port" in record:
            ports[record["worker_pid"]] = record["worker_metrics_port"]
    return list(ports.values()) or [server.metrics_port]


def images_served(port: int, models: dict) -> dict[str, float]:
    served = dict.fromkeys(models, 0.0)
    for labels, value in scrape(port).get("fmnist_images_total", []):
        if labels["model"] in served and labels["code"] == "OK":
            served[labels["model"]] += value
    return served


def memory_rows(models: dict, args, cache: Path, pixels) -> list[dict]:
    rows = []
    for share in ("off", "on"):
        for workers in args.workers:
            server = serve(models, workers, share, cache, args.server_arg)
            try:
                fill(server, models, pixels, args.images)
                pss = tree_pss_mb(server.proc.pid)
            finally:
                server.stop()
            rows.append({"share_weights": share, "workers": workers, "pss_mb": round(pss, 1)})
            print(f"  share {share}, {workers} worker(s): PSS {pss:,.0f} MiB", flush=True)
    for row in rows:
        one = next(r["pss_mb"] for r in rows if r["share_weights"] == row["share_weights"]
                   and r["workers"] == min(args.workers))
        row["vs_one"] = round(row["pss_mb"] / one, 2)
    return rows


def speed_rows(models: dict, args, cache: Path, pixels) -> list[dict]:
    rows = []
    servers = {share: serve(models, 2, share, cache, args.server_arg) for share in ("off", "on")}
    try:
        for name in [m for m in SPEED_MODELS if m in models]:
            request = requests_for(name, models[name][0], pixels)["v1"]
            for share, server in servers.items():  # turns: drifting load hits both alike
                cell = measured(server, "v1", request, args.callers, args.seconds, 1)
                rows.append({"model": name, "share_weights": share, "workers": 2,
                             "callers": args.callers, **cell})
                print(f"  {name} share {share}: {cell['images_per_s']:,.0f} img/s, "
                      f"p50 {cell['p50_ms']:.2f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def main(args: argparse.Namespace) -> int:
    from cli_text import format_table
    from server.workers.cores import usable_cores

    models = pick_models(args.models_dir, None)
    pixels, _ = sample_images()
    load_before = results.announce_machine(usable_cores())
    print(f"models: {', '.join(models)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-density-") as tmp:
        cache = Path(tmp) / "weights"
        memory = memory_rows(models, args, cache, pixels)
        speed = speed_rows(models, args, cache, pixels)
    print("\n" + format_table(memory, [("share_weights", "shared weights", ""),
                                       ("workers", "workers", "d"), ("pss_mb", "PSS MiB", ".0f"),
                                       ("vs_one", "x one worker", ".2f")]))
    print("\n" + format_table(speed, [("model", "model", ""), ("share_weights", "shared", ""),
                                      ("images_per_s", "img/s", ".0f"), ("p50_ms", "p50 ms", ".2f"),
                                      ("p99_ms", "p99 ms", ".2f")]))
    for name in {r["model"] for r in speed}:
        on, off = (next(r["images_per_s"] for r in speed
                        if r["model"] == name and r["share_weights"] == s) for s in ("on", "off"))
        print(f"{name}: sharing on / off = {on / off:.3f} (goal >= 0.95)")
    results.write("density", {"rows": memory + speed, "server_args": args.server_arg,
                              "load_before": load_before, "load_after": os.getloadavg()},
                  args.artifacts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
