"""The Python ceiling for `make bench-serve`: a bare grpc.aio server whose Classify returns one
fixed reply, with nothing else (no decoding, batching, model, metrics, limits or deadlines).

    python -m bench.bare --port 0 [--reuse-port]      # prints "listening on 127.0.0.1:PORT"

What it costs per call is what grpc.aio itself costs (HTTP/2, protobuf in and out, the event
loop): fmnist-serve cannot answer faster in one process. With --reuse-port, several of them
share a port (SO_REUSEPORT), as the workers of `python -m server --workers N` do.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc


def reply() -> pb.ClassifyResponse:
    """What fmnist-serve answers for one image at the default top_k (1), as a constant."""
    return pb.ClassifyResponse(model="lenet_bn", version=1, classifications=[pb.Classification(
        predictions=[pb.Prediction(class_id=9, label="Ankle boot", probability=0.97)])])


class Fixed(pb_grpc.ClassifierServicer):
    def __init__(self) -> None:
        self.answer = reply()

    async def Classify(self, request, context):  # the proto's name
        return self.answer


async def serve(port: int, reuse_port: bool) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    pb_grpc.add_ClassifierServicer_to_server(Fixed(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: share the port")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.reuse_port))


if __name__ == "__main__":
    main()
