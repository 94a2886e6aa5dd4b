"""Checkpoints to served ONNX models: fold BatchNorm -> wrap with preprocessing and softmax ->
export -> check the graph -> compare with PyTorch -> write a new version atomically.

Each step is one module with pure functions (fold, wrap, to_onnx, checks, parity, metadata,
versions); pipeline.py strings them together, cli.py is `python -m exporter`.
"""
