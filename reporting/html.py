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
from reporting.card import Card

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
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; }
.row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


# --- the summary page -----------------------------------------------------------------------------

def index(cards: list[Card], benches: list[Bench], plot: str | None, header: str,
          notes: list[str]) -> str:
    floors = any(c.sources.floor is not None for c in cards)
    headers = ["arch", "input side", "parameters", "checkpoint acc (run log)",
               "ONNX acc (metadata)", "ONNX acc (this report)", *(["d2l floor"] if floors else []),
               "BN folded / remaining", "max |Δ logits|", "top-1 agreement", "model size",
               "training time", "examples/s", "version"]
    floor_note = ("" if floors else " The d2l floor is not shown: trainer/models.py's registry "
                  "does not record it (docs/DESIGN.md lists it by hand).")
    body = [f"<h1>fmnist-serve report</h1>\n<p class=meta>{header}</p>",
            "<h2>Architectures</h2>", table(headers, [_summary_row(c, floors) for c in cards]),
            "<p class=note>Checkpoint accuracy: the best epoch's test accuracy in the run log of "
            "the run that wrote <code>best.pt</code>. ONNX accuracy (metadata): measured by the "
            "exporter on the number of test images shown. ONNX accuracy (this report): the served "
            "<code>model.onnx</code> run with onnxruntime on this report's test images."
            f"{floor_note}</p>",
            "<h2>Benchmarks</h2>", benchmarks(benches, plot)]
    if notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{text(n)}</li>" for n in notes) + "</ul>"]
    return page("fmnist-serve report", "\n".join(body))


def _summary_row(card: Card, floors: bool) -> list[str]:
    s, e, run, ev = card.sources, card.sources.export, card.sources.run, card.evaluation
    meta = e.metadata if e else {}
    folded, remaining = _bn(meta)
    parity = _parity(e)
    floor = [num(acc(s.floor) if s.floor is not None else "—")] if floors else []
    return [f'<a href="{escape(card.arch)}.html">{escape(card.arch)}</a>',
            num(_side(card)), num(f"{s.parameters:,}" if s.parameters is not None else "—"),
            num(f"{acc(run.best['test_acc'])} (epoch {run.best['epoch']})" if run else "—"),
            num(_meta_accuracy(meta) if e else "—"),
            num(f"{acc(ev.accuracy)} on {ev.images:,}" if ev else "—"),
            *floor,
            num(f"{len(folded)} / {len(remaining)}" if e else "—"),
            num(f"{parity['max_abs_diff']:.2g}" if parity else "—"),
            num(f"{parity['top1_agreement']:.2%}" if parity else "—"),
            num(megabytes(e.model.stat().st_size) if e else "—"),
            num(duration(run.train_seconds) if run else "—"),
            num(f"{run.examples_per_s:,.0f}" if run else "—"),
            num(str(e.version) if e else "—")]


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
    description = s.spec.description if s.spec else "not in trainer/models.py's registry"
    body = [f'<p><a href="index.html">← all architectures</a></p>',
            f"<h1>{escape(card.arch)}</h1>\n<p>{escape(description)}</p>"
            f"<p class=meta>{header}</p>",
            "<h2>Facts</h2>", _facts(card),
            "<h2>Test accuracy</h2>", _accuracies(card),
            "<h2>Training curves</h2>",
            _img(card, "curves", "training curves") if "curves" in card.images else na(s.run_note),
            "<h2>Confusion matrix and per-class accuracy</h2>", _confusion(card),
            "<h2>Most confused pairs</h2>", _pairs(card),
            "<h2>BatchNorm folding</h2>", _batchnorm(card),
            "<h2>Parity with PyTorch</h2>", _parity_table(card)]
    return page(f"{card.arch}: fmnist-serve report", "\n".join(body))


def _facts(card: Card) -> str:
    s, e, run = card.sources, card.sources.export, card.sources.run
    rows = [["input side", _side(card)], ["parameters", _params(s.parameters)],
            ["d2l floor", acc(s.floor) if s.floor is not None else
             "not in the registry (docs/DESIGN.md lists the d2l figures by hand)"]]
    if run:
        rows += [["run log", f"<code>{escape(str(run.path))}</code>"],
                 ["epochs", f"{run.records[-1]['epoch_float']:g}"],
                 ["training time", duration(run.train_seconds)],
                 ["examples/s (whole run)", f"{run.examples_per_s:,.0f}"]]
    else:
        rows.append(["run", na(s.run_note)])
    if e:
        rows += [["served model", f"<code>{escape(str(e.model))}</code> (version {e.version})"],
                 ["model size", megabytes(e.model.stat().st_size)],
                 ["exported", escape(e.metadata.get(contract.EXPORTED_AT, "?"))],
                 ["source checkpoint sha256",
                  f"<code>{escape(e.metadata.get(contract.SOURCE_SHA256, '?')[:16])}…</code>"
                  + _stale(card)]]
    else:
        rows.append(["export", na(s.export_note)])
    return table(["", ""], rows, head=False)


def _stale(card: Card) -> str:
    """Say so when best.pt is no longer the checkpoint the served model came from."""
    s, e = card.sources, card.sources.export
    if s.best_sha256 is None or s.best_sha256 == e.metadata.get(contract.SOURCE_SHA256):
        return ""
    return warn(f"best.pt has changed since version {e.version} was exported: "
                f"`make export MODELS={card.arch}` serves it")


def _accuracies(card: Card) -> str:
    s, e, run, ev = card.sources, card.sources.export, card.sources.run, card.evaluation
    rows = []
    if run:
        best = run.best
        rows.append(["checkpoint (run log, best epoch)", num(acc(best["test_acc"])),
                     f"epoch {best['epoch']}, whole test set as the trainer ran it"])
    exported = (e.report or {}).get("checkpoint", {}) if e else {}
    if isinstance(exported.get("test_accuracy"), float):
        rows.append(["exported checkpoint (report.json)", num(acc(exported["test_accuracy"])),
                     f"epoch {escape(str(exported.get('epoch')))}, as the trainer measured it"])
    if e:
        rows.append([f"ONNX <code>{contract.MODEL_FILE}</code> (metadata)",
                     num(escape(e.metadata.get(contract.TEST_ACCURACY, "?"))),
                     f"{_count(e.metadata.get(contract.TEST_IMAGES))} test images, exporter"])
    if ev:
        rows.append([f"ONNX <code>{contract.MODEL_FILE}</code> (this report)",
                     num(acc(ev.accuracy)), f"{ev.images:,} test images, onnxruntime CPU"])
    rows += [_variant_row(e, ev, name) for name in (e.variants if e else ())]
    if s.floor is not None:
        rows.append(["d2l floor", num(acc(s.floor)), "trainer/models.py"])
    if not rows:
        return na(s.run_note) + na(s.export_note)
    extra = "" if (e is None or ev is not None) else na(card.evaluation_note)
    extra += "" if run else na(s.run_note)
    extra += "" if e else na(s.export_note)
    return table(["what", "accuracy", "measured on"], rows) + extra


def _variant_row(export, evaluation, name: str) -> list[str]:
    """A model.<variant>.onnx: as this report measured it (beside its own metadata's figure), or
    only its metadata's figure when there was no test set to measure on."""
    meta = export.variant_metadata.get(name, {})
    claimed = meta.get(contract.TEST_ACCURACY)
    on = f"{_count(meta.get(contract.TEST_IMAGES))}"
    label = f"variant <code>model.{escape(name)}.onnx</code>"
    if evaluation is None:
        return [label, num(escape(claimed or "—")),
                f"{on} test images, its metadata" if claimed else "no accuracy in its metadata"]
    value = evaluation.variants[name]
    note = f"; its metadata says {escape(claimed)} on {on}" if claimed else ""
    return [label, num(acc(value)) if isinstance(value, float) else na(value),
            f"{evaluation.images:,} test images, onnxruntime CPU{note}"]


def _confusion(card: Card) -> str:
    ev = card.evaluation
    if ev is None:
        return na(card.evaluation_note)
    per_class = table(["class", "test images", "accuracy"],
                      [[escape(label), num(f"{int(ev.matrix[i].sum()):,}"),
                        num(acc(ev.per_class[i]))] for i, label in enumerate(card.labels)])
    return f'<div class=row>{_img(card, "confusion", "confusion matrix")}{per_class}</div>'


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


def _batchnorm(card: Card) -> str:
    e = card.sources.export
    if e is None:
        return na(card.sources.export_note)
    folded, remaining = _bn(e.metadata)
    if not folded and not remaining:
        return "<p>No BatchNorm in this architecture.</p>"
    parts = [f"<p>{len(folded)} folded into the layer before them, {len(remaining)} remaining.</p>"]
    if folded:
        parts.append(table(["BatchNorm", "folded into"],
                           [[f"<code>{escape(b)}</code>", f"<code>{escape(into)}</code>"]
                            for b, into in folded.items()]))
    if remaining:
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

def _bn(meta: dict) -> tuple[dict, dict]:
    def load(key):
        try:
            return dict(json.loads(meta.get(key, "{}")))
        except (TypeError, ValueError):
            return {}
    return load(contract.BN_FOLDED), load(contract.BN_REMAINING)


def _parity(export) -> dict | None:
    """report.json's parity; without report.json, the two figures the metadata also carries."""
    if export is None:
        return None
    if export.report and isinstance(export.report.get("parity"), dict):
        return export.report["parity"]
    meta = export.metadata
    try:
        return {"images": int(meta[contract.TEST_IMAGES]),
                "max_abs_diff": float(meta[contract.MAX_ABS_DIFF]),
                "top1_agreement": float(meta[contract.TOP1_AGREEMENT])}
    except (KeyError, ValueError):
        return None


def _meta_accuracy(meta: dict) -> str:
    value = meta.get(contract.TEST_ACCURACY)
    if value is None:
        return "—"
    return f"{escape(value)} on {_count(meta.get(contract.TEST_IMAGES))}"


def _count(images: str | None) -> str:
    """A metadata image count with thousands separators ("?" when the file does not say)."""
    return f"{int(images):,}" if images and images.isascii() and images.isdigit() else "?"


def _side(card: Card) -> str:
    if card.sources.spec:
        return str(card.sources.spec.input_side)
    e = card.sources.export
    return escape(e.metadata.get(contract.INPUT_SIDE, "—")) if e else "—"


def _params(n: int | None) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)" if n is not None else "—"


def _img(card: Card, key: str, alt: str) -> str:
    return f'<img src="{escape(card.images[key])}" alt="{escape(alt)}">'


# --- small formatting helpers ---------------------------------------------------------------------

def table(headers: list[str], rows: Iterable[list[str]], head: bool = True) -> str:
    """Cells are HTML already (escaped by the caller); a cell made by num() is right-aligned."""
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_NUM = "\x00num\x00"


def num(html: str) -> str:
    """Mark a cell as a figure, right-aligned by table()."""
    return _NUM + html


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


def warn(note: str) -> str:
    return f"<p class=na>{text(note)}</p>"


def text(note: str) -> str:
    """Escape a note, and show its `command` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(note))


def acc(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
