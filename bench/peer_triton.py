"""The Triton side of `make bench-peer`: Triton's core (C++ front-end, dynamic batcher) through
PyTriton 0.7, serving model.onnx files with onnxruntime from a Python callable.

It runs in .venv-triton (made from Debian's /usr/bin/python3.11: PyTriton's bundled tritonserver
links libpython3.11.so), never in the project's venv. It does what fmnist-serve's runner does, so
the comparison is of the serving engines: the same model.onnx, the same onnxruntime build and
session options (--threads intra-op threads, no spinning), input `image` uint8 [N,1,28,28],
outputs `logits` and `probabilities`, dynamic batching at the same settings.

    .venv-triton/bin/python bench/peer_triton.py --model lenet_bn=artifacts/models/lenet_bn/1/model.onnx \\
        --grpc-port 8101 --http-port 8100 --metrics-port 8102 --max-batch 32 --delay-ms 2 --threads 2
"""

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def infer_func(model: ort.InferenceSession):
    @batch
    def infer(image: np.ndarray):
        logits, probabilities = model.run(["logits", "probabilities"], {"image": image})
        return {"logits": logits, "probabilities": probabilities}
    return infer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    args = p.parse_args()
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port)
    with Triton(config=config) as triton:
        for spec in args.model:
            name, path = spec.split("=", 1)
            triton.bind(
                model_name=name, infer_func=infer_func(session(path, args.threads)),
                inputs=[Tensor(name="image", dtype=np.uint8, shape=(1, 28, 28))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(10,)),
                         Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
                config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher(
                    max_queue_delay_microseconds=int(args.delay_ms * 1000))))
        triton.serve()


if __name__ == "__main__":
    main()
