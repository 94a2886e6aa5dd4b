"""`python -m reporting` (`make report`): one static HTML report of everything in artifacts/.

Nothing in the report is typed by hand: every figure is read from what the other parts left in the
artifacts folder (run logs, checkpoints, exported models with their metadata and report.json,
benchmark results) or measured by running the served ONNX model on the test set. A missing piece
is shown as "not available" with the command that produces it. The modules, in data-flow order:

- ``sources``: reads runs/, checkpoints/ and models/ for one architecture;
- ``predict``: the ONNX model's predictions on the test set (onnxruntime, cached by content);
- ``stats``: confusion matrix, per-class accuracy, most confused pairs (pure numpy);
- ``benchmarks``: artifacts/bench/*.json (bench/results.py's format) as tables and plot points;
- ``plots``: the PNG figures (matplotlib, Agg);
- ``html``: the pages, as strings;
- ``build``: strings the above together and writes the report atomically; ``cli``: the command.
"""
