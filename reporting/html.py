"""The report's pages as HTML strings: a summary page and one card per architecture.

Plain HTML and one inline stylesheet: no script, no framework, nothing fetched, so the folder can
be opened from disk, copied, or attached to a CI run as it is. Every value is escaped.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from typing import Iterable

import model_contract as contract
from reporting.benchmarks import Bench
from reporting.card import CHANCE, NEAR_CHANCE, Card
from reporting.plots import THUMBNAIL_SCALE

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 1.5em auto; max-width: 1240px;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 0.3em; }
.meta, .note { color: #666; } .na { color: #a33; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.nw { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; }
.row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.badge { background: #b3261e; color: #fff; border-radius: 0.7em; padding: 0 0.55em;
         font-size: 0.72em; font-weight: 600; white-space: nowrap; vertical-align: middle; }
img.thumb { width: 84px; height: 84px; image-rendering: pixelated; vertical-align: middle;
            border: 0; margin-right: 0.4em; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


# --- the summary page -----------------------------------------------------------------------------

INDEX_HEADERS = ["arch", "input side", "parameters", "checkpoint acc (run log)",
                 "ONNX acc (metadata)", "ONNX acc (this report)", "d2l floor",
                 "BN folded / remaining", "max |Δ logits|", "top-1 agreement", "model size",
                 "training time", "examples/s", "version"]


def index(cards: list[Card], benches: list[Bench], plot: str | None, header: str,
          notes: list[str]) -> str:
    body = [f"<h1>fmnist-serve report</h1>\n<p class=meta>{header}</p>",
            "<h2>Architectures</h2>", table(INDEX_HEADERS, [_summary_row(c) for c in cards]),
            "<p class=note>Checkpoint accuracy: the best epoch's test accuracy in the run log of "
            "the run that wrote <code>best.pt</code>. ONNX accuracy (metadata): measured by the "
            "exporter on the number of test images shown. ONNX accuracy (this report): the served "
            "<code>model.onnx</code> run with onnxruntime on this report's test images. d2l floor: "
            "the test accuracy d2l's own notebooks reach after 10 epochs of the d2l recipe. "
            f"{badge()}: a test accuracy under {NEAR_CHANCE:.2f}, twice what guessing one of "
            f"{contract.NUM_CLASSES} classes scores; such a model has barely trained.</p>",
            "<h2>Benchmarks</h2>", benchmarks(benches, plot)]
    if notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{text(n)}</li>" for n in notes) + "</ul>"]
    return page("fmnist-serve report", "\n".join(body))


def _summary_row(card: Card) -> list[str]:
    s, e, run, ev = card.sources, card.sources.export, card.sources.run, card.evaluation
    meta = e.metadata if e else None
    parity = _parity(e)
    name = f'<a href="{escape(card.arch)}.html">{escape(card.arch)}</a>'
    return [name + (f" {badge()}" if card.near_chance else ""),
            num(_side(card)), num(f"{s.parameters:,}" if s.parameters is not None else "—"),
            num(acc(run.best["test_acc"]), f"({_after(run.best)})") if run else num("—"),
            num(*_meta_accuracy(e)),
            num(acc(ev.accuracy), f"on {ev.images:,}") if ev else num("—"),
            num(acc(s.floor) if s.floor is not None else "—"),
            num(_bn_counts(card, meta) if e else "—"),
            num(f"{parity['max_abs_diff']:.2g}" if parity else "—"),
            num(f"{parity['top1_agreement']:.2%}" if parity else "—"),
            num(megabytes(e.model.stat().st_size) if e else "—"),
            num(duration(run.train_seconds) if run else "—"),
            num(f"{run.examples_per_s:,.0f}" if run else "—"),
            num(str(e.version) if e else "—")]


def _bn_counts(card: Card, meta) -> str:
    """"folded / remaining", and a link to the card's reasons when some remain."""
    if meta is None:
        return "—"
    counts = f"{len(meta.bn_folded)} / {len(meta.bn_remaining)}"
    if not meta.bn_remaining:
        return counts
    return (f'{counts} <br><a href="{escape(card.arch)}.html#batchnorm">why '
            f"{len(meta.bn_remaining)} stay</a>")


def benchmarks(benches: list[Bench], plot: str | None) -> str:
    if not benches:
        return na("no artifacts/bench/*.json: run `make bench-train`, `make bench-export` or "
                  "`make bench-serve`")
    parts = []
    if plot:
        parts.append(f'<h3>Throughput against latency</h3>\n<img src="{escape(plot)}" '
                     f'alt="images/s against latency">')
    else:
        parts.append("<p class=note>No benchmark row has both <code>images_per_s</code> and "
                     "<code>p50_ms</code>/<code>p99_ms</code>, so there is no "
                     "throughput-vs-latency plot.</p>")
    for bench in benches:
        settings = ", ".join(f"{k} {_value(v)}" for k, v in bench.settings.items())
        parts.append(f"<h3>{escape(bench.name)}</h3>\n<p class=meta>{escape(bench.created)}; "
                     f"{escape(bench.machine)}{'; ' + escape(settings) if settings else ''}</p>")
        parts.append(table(bench.columns, [[_cell(r.get(c)) for c in bench.columns]
                                           for r in bench.rows]))
    return "\n".join(parts)


# --- one architecture's card ----------------------------------------------------------------------

def card_page(card: Card, header: str) -> str:
    s = card.sources
    description = (s.spec.description if s.spec else
                   "an architecture this trainer does not know: found in the artifacts folder")
    name = escape(card.arch) + (f" {badge()}" if card.near_chance else "")
    body = [f'<p><a href="index.html">← all architectures</a></p>',
            f"<h1>{name}</h1>\n<p>{escape(description)}</p>"
            f"<p class=meta>{header}</p>{_near_chance(card)}",
            "<h2>Facts</h2>", _facts(card),
            "<h2>Test accuracy</h2>", _accuracies(card),
            "<h2>Training curves</h2>",
            _img(card, "curves", "training curves") if "curves" in card.images else na(s.run_note),
            "<h2>Confusion matrix and per-class accuracy</h2>", _confusion(card),
            "<h2>Most confused pairs</h2>", _pairs(card),
            "<h2>Sample predictions</h2>", _samples(card),
            "<h2 id=batchnorm>BatchNorm folding</h2>", _batchnorm(card),
            "<h2>Parity with PyTorch</h2>", _parity_table(card)]
    return page(f"{card.arch}: fmnist-serve report", "\n".join(body))


def _near_chance(card: Card) -> str:
    """Why the badge: the figure it rests on, and how little the model was trained."""
    if not card.near_chance:
        return ""
    run = card.sources.run
    trained = (f" It was trained for {epochs(run.records[-1]['epoch_float'])}: the figures "
               f"below describe a network that has learnt next to nothing." if run else "")
    return warn(f"Near chance: its test accuracy, {acc(card.accuracy)}, is under "
                f"{NEAR_CHANCE:.2f}, twice the {CHANCE:.2f} that guessing one of "
                f"{contract.NUM_CLASSES} classes scores.{trained}")


def _facts(card: Card) -> str:
    s, run = card.sources, card.sources.run
    rows = [["input side", _side(card)], ["parameters", _params(s.parameters)]]
    if s.floor is not None:
        rows.append(["d2l floor", f"{acc(s.floor)} (d2l's test accuracy after 10 epochs of its "
                                  f"recipe)"])
    if run:
        rows += [["run log", f"<code>{escape(str(run.path))}</code>"],
                 ["epochs trained", _trained(run)],
                 ["training time", duration(run.train_seconds)],
                 ["examples/s (whole run)", f"{run.examples_per_s:,.0f}"]]
    else:
        rows.append(["run", na(s.run_note)])
    rows += _export_facts(card)
    return table(["", ""], rows, head=False)


def _trained(run) -> str:
    """Epochs trained, against the plan, and why a run stopped part-way through an epoch."""
    last = run.records[-1]
    steps = last["step"]
    out = (f"{last['epoch_float']:g}" + (f" of {run.planned_epochs} planned" if run.planned_epochs
                                         else "")
           + f" ({steps:,} training step{'s' if steps != 1 else ''})")
    if last.get("partial"):
        why = (f"its {duration(run.time_budget)} time budget ended it"
               if run.time_budget is not None else "it was stopped")
        out += f"; the run stopped part-way through epoch {last['epoch']}: {why}"
    return escape(out)


def _export_facts(card: Card) -> list[list[str]]:
    e = card.sources.export
    if e is None:
        return [["export", na(card.sources.export_note)]]
    rows = [["served model", f"<code>{escape(str(e.model))}</code> (version {e.version})"],
            ["model size", megabytes(e.model.stat().st_size)]]
    if e.metadata is None:
        return rows + [["metadata", warn(f"invalid, so the server refuses this file: "
                                         f"{e.metadata_error}")]]
    return rows + [["exported", escape(e.metadata.exported_at)],
                   ["source checkpoint sha256",
                    f"<code>{escape(e.metadata.source_sha256[:16])}…</code>" + _stale(card)]]


def _stale(card: Card) -> str:
    """Say so when best.pt is no longer the checkpoint the served model came from."""
    s, e = card.sources, card.sources.export
    if s.best_sha256 is None or s.best_sha256 == e.metadata.source_sha256:
        return ""
    return warn(f"best.pt has changed since version {e.version} was exported: "
                f"`make export MODELS={card.arch}` serves it")


def _accuracies(card: Card) -> str:
    s, e, run, ev = card.sources, card.sources.export, card.sources.run, card.evaluation
    rows = []
    if run:
        best = run.best
        on = f", {best['test_images']:,} test images" if best.get("test_images") else ""
        rows.append(["checkpoint (run log, best epoch)", num(acc(best["test_acc"])),
                     f"{_after(best)}{on}, as the trainer measured it"])
    exported = (e.report or {}).get("checkpoint", {}) if e else {}
    if isinstance(exported.get("test_accuracy"), float):
        rows.append(["exported checkpoint (report.json)", num(acc(exported["test_accuracy"])),
                     f"{_exported_after(exported, run)}, as the trainer measured it"])
    if e:
        rows.append(_metadata_row(e))
    if ev:
        rows.append([f"ONNX <code>{contract.MODEL_FILE}</code> (this report)",
                     num(acc(ev.accuracy)), _measured_on(ev)])
    rows += [_variant_row(e, ev, name) for name in (e.variants if e else ())]
    if s.floor is not None:
        rows.append(["d2l floor", num(acc(s.floor)), "d2l's notebooks, 10 epochs of its recipe"])
    if not rows:
        return na(s.run_note) + na(s.export_note)
    extra = "" if (e is None or ev is not None) else na(card.evaluation_note)
    extra += "" if run else na(s.run_note)
    extra += "" if e else na(s.export_note)
    return table(["what", "accuracy", "measured on"], rows) + extra


def _after(record: dict) -> str:
    """When a run-log record was measured, in epochs trained: the one numbering the card uses
    (the log's 1-based "epoch" and a checkpoint's count of completed epochs differ by one for a
    partial epoch)."""
    return f"after {epochs(record['epoch_float'])}"


def _exported_after(exported: dict, run) -> str:
    """The exported checkpoint is a run-log record when its accuracy is one; else only its count
    of completed epochs is known."""
    for record in (run.records if run else []):
        if record["test_acc"] == exported["test_accuracy"]:
            return _after(record)
    return f"after at least {escape(str(exported.get('epoch')))} complete epochs"


def _metadata_row(export) -> list[str]:
    label = f"ONNX <code>{contract.MODEL_FILE}</code> (metadata)"
    meta = export.metadata
    if meta is None:
        return [label, num("—"), warn(f"invalid metadata: {export.metadata_error}")]
    return [label, num(acc(meta.test_accuracy)), f"{_count(meta)} test images, exporter"]


def _measured_on(ev) -> str:
    on = f"{ev.images:,} test images, onnxruntime CPU"
    return on + (f" (the first {ev.images:,} only: {text(ev.subset)})" if ev.subset else "")


def _variant_row(export, evaluation, name: str) -> list[str]:
    """A model.<variant>.onnx: as this report measured it (beside its own metadata's figure), or
    only its metadata's figure when there was no test set to measure on."""
    meta = export.variant_metadata.get(name)
    claimed = acc(meta.test_accuracy) if meta else None
    on = _count(meta) if meta else "?"
    label = f"variant <code>model.{escape(name)}.onnx</code>"
    if evaluation is None:
        return [label, num(claimed or "—"),
                f"{on} test images, its metadata" if claimed else "no accuracy in its metadata"]
    value = evaluation.variants[name]
    note = f"; its metadata says {claimed} on {on}" if claimed else ""
    return [label, num(acc(value)) if isinstance(value, float) else na(value),
            f"{_measured_on(evaluation)}{note}"]


def _confusion(card: Card) -> str:
    ev = card.evaluation
    if ev is None:
        return na(card.evaluation_note)
    per_class = table(["class", "test images", "accuracy"],
                      [[escape(label), num(f"{int(ev.matrix[i].sum()):,}"),
                        num(acc(ev.per_class[i]))] for i, label in enumerate(card.labels)])
    return (_subset_note(ev)
            + f'<div class=row>{_img(card, "confusion", "confusion matrix")}{per_class}</div>')


def _subset_note(ev) -> str:
    if not ev.subset:
        return ""
    return f"<p class=note>On the first {ev.images:,} test images only: {text(ev.subset)}.</p>"


def _pairs(card: Card) -> str:
    ev = card.evaluation
    if ev is None:
        return na(card.evaluation_note)
    if not ev.pairs:
        return "<p>No test image was misclassified.</p>"
    rows = [[escape(card.labels[p.truth]), escape(card.labels[p.predicted]), num(str(p.count)),
             num(f"{p.count / ev.matrix[p.truth].sum():.1%}")] for p in ev.pairs]
    return (table(["true class", "predicted as", "images", "share of the true class"], rows)
            + _img(card, "pairs", "examples of the most confused pairs"))


def _samples(card: Card) -> str:
    """A few test images with the served model's answer: the first it got right and the first it
    got wrong, one per true class where it can."""
    ev = card.evaluation
    if ev is None:
        return na(card.evaluation_note)
    right = [x for x in ev.samples if x.truth == x.predicted]
    wrong = [x for x in ev.samples if x.truth != x.predicted]
    intro = (f"<p class=note>Test images as the served model sees them (28×28 pixels, shown "
             f"{THUMBNAIL_SCALE}× larger), with the class it predicts: the first it gets right and "
             f"the first it gets wrong among the {ev.images:,} it was run on, one per true class "
             f"where it can.</p>")
    return (intro + "<div class=row>" + _sample_table(card, "right", right, ev.images)
            + _sample_table(card, "wrong", wrong, ev.images) + "</div>")


def _sample_table(card: Card, title: str, samples: list, images: int) -> str:
    if not samples:
        return f"<div><h3>Predicted {title}</h3><p>None of the {images:,} test images.</p></div>"
    rows = []
    for x in samples:
        truth, predicted = card.labels[x.truth], card.labels[x.predicted]
        picture = (f'<img class=thumb src="{escape(card.images[f"sample-{x.index}"])}" '
                   f'alt="test image {x.index}, true class {escape(truth)}">')
        rows.append([f"{picture} #{x.index}", escape(truth), escape(predicted)])
    return (f"<div><h3>Predicted {title}</h3>"
            + table(["test image", "true class", "predicted"], rows) + "</div>")


def _batchnorm(card: Card) -> str:
    e = card.sources.export
    if e is None:
        return na(card.sources.export_note)
    if e.metadata is None:
        return na(f"invalid metadata: {e.metadata_error}")
    folded, remaining = e.metadata.bn_folded, e.metadata.bn_remaining
    if not folded and not remaining:
        return "<p>No BatchNorm in this architecture.</p>"
    parts = [f"<p>{len(folded)} folded into the layer before them, {len(remaining)} remaining.</p>"]
    if folded:
        parts.append(table(["BatchNorm", "folded into"],
                           [[f"<code>{escape(b)}</code>", f"<code>{escape(into)}</code>"]
                            for b, into in folded.items()]))
    if remaining:
        parts.append(
            f"<p>A BatchNorm folds into the convolution or linear layer whose output it "
            f"normalises: its scale and shift become that layer's weights. These {len(remaining)} "
            f"have no such layer right before them (a BatchNorm that normalises a block's input, "
            f"a concatenation or a pooling result, as pre-activation designs do), so they stay in "
            f"the served model as BatchNormalization nodes: the same answers, a little more time "
            f"per image. The exporter's reason for each:</p>")
        parts.append(table(["BatchNorm", "remains because"],
                           [[f"<code>{escape(b)}</code>", escape(why)]
                            for b, why in remaining.items()]))
    return "\n".join(parts)


def _parity_table(card: Card) -> str:
    parity = _parity(card.sources.export)
    if parity is None:
        return na(card.sources.export_note or "no report.json beside the model")
    rows = [["test images", num(f"{parity['images']:,}")],
            ["max |Δ logits|", num(f"{parity['max_abs_diff']:.3g}")
             + _limit(parity, "limit_max_abs_diff", "{:g}")],
            ["top-1 agreement", num(f"{parity['top1_agreement']:.4%}")
             + _limit(parity, "limit_top1_agreement", "{:.2%}")]]
    if "disagreements" in parity:
        rows.append(["images where they differ", num(f"{parity['disagreements']:,}")])
    for key, label in (("torch_accuracy", "PyTorch accuracy"), ("onnx_accuracy", "ONNX accuracy")):
        if key in parity:
            rows.append([label, num(acc(parity[key]))])
    return table(["", ""], rows, head=False)


def _limit(parity: dict, key: str, spec: str) -> str:
    return f" (limit {spec.format(parity[key])})" if key in parity else ""


# --- reading the sources for display --------------------------------------------------------------

def _parity(export) -> dict | None:
    """report.json's parity; without report.json, the figures the metadata also carries."""
    if export is None:
        return None
    if export.report and isinstance(export.report.get("parity"), dict):
        return export.report["parity"]
    meta = export.metadata
    if meta is None or meta.max_abs_diff is None or meta.top1_agreement is None:
        return None
    return {"images": meta.test_images, "max_abs_diff": meta.max_abs_diff,
            "top1_agreement": meta.top1_agreement}


def _meta_accuracy(export) -> tuple[str, ...]:
    """The exporter's accuracy and what it was measured on, as num()'s parts."""
    if export is None or export.metadata is None:
        return ("—",) if export is None else (warn("invalid metadata"),)
    return acc(export.metadata.test_accuracy), f"on {_count(export.metadata)}"


def _count(meta) -> str:
    """The metadata's image count with thousands separators ("?" when the file does not say)."""
    return f"{meta.test_images:,}" if meta.test_images else "?"


def _side(card: Card) -> str:
    if card.sources.spec:
        return str(card.sources.spec.input_side)
    e = card.sources.export
    return str(e.metadata.input_side) if e and e.metadata else "—"


def _params(n: int | None) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)" if n is not None else "—"


def _img(card: Card, key: str, alt: str) -> str:
    return f'<img src="{escape(card.images[key])}" alt="{escape(alt)}">'


# --- small formatting helpers ---------------------------------------------------------------------

def table(headers: list[str], rows: Iterable[list[str]], head: bool = True) -> str:
    """Cells are HTML already (escaped by the caller); a cell made by num() is right-aligned.
    A table wider than the page scrolls in its own box: the page itself never scrolls sideways."""
    out = ["<div class=scroll><table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


_NUM = "\x00num\x00"


def num(*parts: str) -> str:
    """Mark a cell as a figure, right-aligned by table(). Each part (a figure, then what it was
    measured on: "0.9028", "on 10,000") stays on one line; a table short of room puts them on
    two (the summary table at 1280 px: tests/reporting/test_layout.py)."""
    return _NUM + " ".join(f"<span class=nw>{part}</span>" for part in parts)


def _td(cell: str) -> str:
    if cell.startswith(_NUM):
        return f"<td class=num>{cell[len(_NUM):]}</td>"
    return f"<td>{cell}</td>"


def _cell(value) -> str:
    return num(escape(_value(value))) if isinstance(value, (int, float)) else escape(_value(value))


def _value(value) -> str:
    """Benchmark and parity values: floats to 4 significant digits, the rest as written."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value if isinstance(value, str) else json.dumps(value)


def na(note: str) -> str:
    return f"<p class=na>not available: {text(note)}</p>"


def badge() -> str:
    return "<span class=badge>near chance</span>"


def warn(note: str) -> str:
    return f"<p class=na>{text(note)}</p>"


def text(note: str) -> str:
    """Escape a note, and show its `command` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(note))


def acc(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def epochs(x: float) -> str:
    return f"{x:g} epoch{'' if x == 1 else 's'}"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
