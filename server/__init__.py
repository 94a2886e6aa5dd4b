"""fmnist-serve's gRPC server: exported ONNX models behind fmnist.v1.Classifier.

Layers, outermost first (as MLServer splits them):

- ``cli`` / ``__main__``: flags, logging, signals (``python -m server --help``);
- ``app``: ``create_server(...)`` wires the gRPC server, health and reflection; returns the port;
- ``servicer``: fmnist.v1, translates protobuf <-> core calls;
- ``v2``, ``v2_tensors``: KServe v2 / Triton's GRPCInferenceService over the same core;
- ``rpc``: what both share: the one place that maps domain errors to status codes;
- ``core``: the transport-free work (validate, decode, run, top-k); never imports grpc;
- ``store``: scans the models folder, reads ONNX metadata, picks versions, loads runners;
- ``runner``: owns one onnxruntime session (the seam where a dynamic batcher goes);
- ``providers``: --device -> execution providers, the CUDA fallback, what is really active;
- ``decode``: image bytes -> 28x28 uint8 (pure);
- ``errors``: typed domain errors, each carrying its status code name;
- ``logs``: text or JSON log lines.

Nothing here imports torch, trainer or exporter: the ONNX file's metadata says all the server needs.
"""

__version__ = "0.1.0"  # v2 ServerMetadata reports it
