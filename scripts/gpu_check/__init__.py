"""The pieces of `make gpu-check` (scripts/gpu_check.py runs them in order).

record.py   the checks and figures, written as gpu-check.json and gpu-check.md after every step
kit.py      the plan per device (budgets), the wall clock, subprocesses, wheels and stubs
preflight.py  versions, GPU, whether the CUDA provider is really active, packages, data
training.py   python -m trainer: every architecture, --resume, torchrun
exporting.py  python -m exporter with FP16; parity on the CUDA provider with TF32 off and on
serving.py    python -m server --device cuda: models, probes, warm-up, --cuda-tf32
benchmark.py  in-process onnxruntime (plain and IO binding) against the server, fp32 and fp16
report.py     gpu-check.md from the record
"""
