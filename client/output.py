"""What a person reads: the answers as lines or tables, the served models as a table (stdlib
only; --json prints the dicts these are made from)."""

from __future__ import annotations

import textwrap

from cli_text import format_table

_PREDICTION_COLUMNS = [("label", "label", ""), ("class_id", "class", "d"),
                       ("probability", "probability", ".4f")]
_MODEL_COLUMNS = [("name", "model", ""), ("version", "version", "d"), ("variant", "variant", ""),
                  ("test_accuracy", "accuracy", ".4f"), ("test_images", "on images", ""),
                  ("input_side", "input", "d"), ("provider", "provider", ""),
                  ("probe", "probe |Δ|", ""), ("fp32_agreement", "agree fp32", ".2%"),
                  ("speedup", "vs fp32 b32", ""), ("note", "note", "")]


def format_results(answer: dict) -> str:
    """Top-1: one line per image, `<file>: <label> (<probability>)  [<model> v<version>]`, the
    labels aligned. Top-k: per image a `<file>  [<model> v<version>]` line over a table of its
    k classes, best first."""
    tag = f"[{answer['model']} v{answer['version']}]"
    results = answer["results"]
    if all(len(r["predictions"]) == 1 for r in results):
        width = max(len(r["file"]) for r in results) + 1
        return "\n".join(f"{r['file'] + ':':<{width}} {r['predictions'][0]['label']} "
                         f"({r['predictions'][0]['probability']:.1%})  {tag}" for r in results)
    return "\n".join(f"{r['file']}  {tag}\n"
                     + textwrap.indent(format_table(r["predictions"], _PREDICTION_COLUMNS), "  ")
                     for r in results)


def format_models(listed: dict) -> str:
    """The --list table (one row per served model version) from models.models_dict, its note
    naming the model that answers without --model and those near chance, then one line per
    refused version."""
    refused = [f"not served: {r['name']} v{r['version']}: {r['reason']}" for r in listed["refused"]]
    if not listed["models"]:
        return "\n".join(["the server serves no models", *refused])
    default = max((m for m in listed["models"] if m["name"] == listed["default"]),
                  key=lambda m: m["version"])
    rows = [{**m, "test_images": m["test_images"] or "?",
             "probe": ("unverified" if m["probe_max_abs_diff"] is None
                       else f"{m['probe_max_abs_diff']:.1e}"),
             "speedup": _speedup(m["speedup_vs_fp32"]),
             "note": ", ".join(["default"] * (m is default) + ["near chance"] * m["near_chance"])
             or None} for m in listed["models"]]
    return "\n".join([format_table(rows, _MODEL_COLUMNS), *refused])


def _speedup(speedup: float | None) -> str | None:
    """A variant's batch-32 speed over fp32 as the server measured it; says when it is slower."""
    if speedup is None:
        return None
    return f"{speedup:.2f}x" + (" (slower here)" if speedup < 1 else "")
