"""What every command line of the project shares: its --help layout and its text tables.

Torch-free and dependency-free, so the server and the client use it as the trainer does.
"""

from __future__ import annotations

import argparse
from typing import Iterable


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description's examples stay as written (line breaks kept); a flag's default is shown
    only where it says something: not for None, False or []."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def format_table(rows: Iterable[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows of dicts -> an aligned text table; columns are (key, header, format spec). A missing
    or None value shows as "-"; the first column is left-aligned, the rest right-aligned."""
    rows = list(rows)
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([format(r[k], spec) if r.get(k) is not None else "-" for k, _, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
