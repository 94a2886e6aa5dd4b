"""Step 4, figures: in-process onnxruntime against the running server, for the benchmark models
(lenet_bn and resnet18) in fp32 and fp16.

In-process, at batch 1 and at the server's max batch: server/models/runner.py's OnnxRunner set up
as the server sets it up, and the same model through IO binding (the input bound from host
memory, the outputs left on the device and copied back once: what a server would have to do to
use it). The server: 1 and max-batch closed-loop callers of single images, over one connection
(bench.serve's drivers). IO binding "helps" where it is at least 5% faster than a plain run at
the same batch; the server does not use it, so a help found here is a change to consider.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gpu_check.kit import Kit
from gpu_check.record import FAILED, NO_CUDA, PASSED, Check
from gpu_check.serving import version_folders

IO_BINDING_HELPS = 1.05


def bench(kit: Kit, server) -> list[Check]:
    import model_contract as mc

    checks = []
    for arch, folder in version_folders(kit, kit.bench_models).items():
        for variant in (None, "fp16"):
            name = mc.served_name(arch, variant)
            path = folder / (mc.variant_file(variant) if variant else mc.MODEL_FILE)
            if not path.is_file():
                status = NO_CUDA if variant and not kit.plan.cuda else FAILED
                checks.append(Check("bench", f"bench {name}", status, f"no {path.name}: the "
                                    "exporter writes FP16 only where CUDA checks it"))
                continue
            if kit.out_of_time("bench", 12 * kit.plan.cell_seconds + 10):
                return checks
            checks.append(_bench_one(kit, server, name, path))
    return checks


def _bench_one(kit: Kit, server, name: str, path: Path) -> Check:
    from bench.serve import batch_of, sample_images

    pixels, _ = sample_images()
    b = kit.plan.max_batch
    try:
        cells = {**in_process_cells(kit, path, {n: batch_of(pixels, n) for n in (1, b)}),
                 **{f"server {c} caller(s)": server_cell(kit, server.port, name, pixels, c)
                    for c in (1, b)}}
    except Exception as e:  # noqa: BLE001 - one model's failure is its check, not the run's end
        return Check("bench", f"bench {name}", FAILED, f"{type(e).__name__}: {e}")
    helps = {f"b{n}": cells[f"io binding b{n}"]["images_per_s"]
             / cells[f"in-process b{n}"]["images_per_s"] for n in (1, b)}
    figures = {"cells": cells, "io_binding_speedup": {k: round(r, 3) for k, r in helps.items()},
               "io_binding_helps": [k for k, r in helps.items() if r >= IO_BINDING_HELPS]}
    line = ", ".join(f"{k} {v['images_per_s']:,.0f} img/s" for k, v in cells.items())
    line += "; IO binding " + ", ".join(f"{k} {r:.2f}x" for k, r in helps.items())
    if not kit.plan.cuda:
        return Check("bench", f"bench {name}", NO_CUDA, "rehearsed on the CPU: " + line, figures)
    return Check("bench", f"bench {name}", PASSED, line, figures)


def in_process_cells(kit: Kit, path: Path, batches: dict) -> dict[str, dict]:
    """Plain onnxruntime runs and IO-binding runs of the same model in this process, on the
    session the server would make (execution_providers' CUDA set-up), at each batch."""
    import model_contract as mc
    from bench.serve import in_process
    from gpu_check.exporting import device_session

    session = device_session(kit, path, tf32=False)
    binding = _io_bound(kit, path)
    out = {}
    for n, images in batches.items():
        seconds = kit.plan.cell_seconds
        out[f"in-process b{n}"] = in_process(
            lambda: session.run(list(mc.OUTPUTS), {mc.INPUT: images}), seconds, n)
        out[f"io binding b{n}"] = in_process(binding(images), seconds, n)
    return out


def _io_bound(kit: Kit, path: Path):
    """A function of a batch that returns one IO-bound call of the model on the device."""
    import model_contract as mc
    from gpu_check.exporting import device_session

    session = device_session(kit, path, tf32=False)
    where = "cuda" if kit.plan.cuda else "cpu"

    def call_with(images):
        binding = session.io_binding()

        def call():
            binding.bind_cpu_input(mc.INPUT, images)
            for output in mc.OUTPUTS:
                binding.bind_output(output, where)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        return call
    return call_with


def server_cell(kit: Kit, port: int, name: str, pixels, callers: int) -> dict:
    """`callers` closed-loop callers of one image each, over one connection."""
    import grpc
    from fmnist.v1 import classifier_pb2 as pb
    from fmnist.v1 import classifier_pb2_grpc as pb_grpc

    from bench.serve import OWN_CONNECTION, batch_of, drive

    request = pb.ClassifyRequest(model=name, images=[pb.Image(raw=batch_of(pixels, 1).tobytes())])

    async def measure():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as ch:
            stub = pb_grpc.ClassifierStub(ch)
            return await drive(lambda: stub.Classify(request, timeout=60), callers,
                               kit.plan.cell_seconds, 1)
    return asyncio.run(measure())
