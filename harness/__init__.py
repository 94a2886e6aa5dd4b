"""What the tests, the scripts and the benchmarks share to drive the project as a user does:
``process`` (a real `python -m server` with its log, port, metrics and /proc figures), ``data``
(small Fashion-MNIST-format idx files), ``models`` (models trained for a few steps and exported
through the real commands). Nothing here is imported by the server, the client or the trainer."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
