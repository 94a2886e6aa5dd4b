"""Checkpoints to served ONNX models: fold BatchNorm -> wrap with preprocessing and softmax ->
export -> check the graph -> compare with PyTorch -> write a new version atomically.

Each step is one module of pure functions (fold, wrap, to_onnx, checks, parity, metadata, variants,
versions), so each is testable alone; pipeline.py strings them together and times them, report.py
is what a person reads afterwards, cli.py is `python -m exporter`.
"""
