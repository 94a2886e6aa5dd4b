"""What every command line of the project shares: its version, its --help layout and its text
tables.

Torch-free and dependency-free, so the server and the client use it as the trainer does. VERSION
is the project's one version string: every command's --version prints it, and the server reports
it (server.__version__: KServe v2 ServerMetadata, /openapi.json).
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Iterable

VERSION = "0.1.0"


def add_version(parser: argparse.ArgumentParser) -> None:
    """--version: `<prog> (fmnist-serve) <VERSION>` on stdout, exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (fmnist-serve) {VERSION}",
                        help="print the version and exit")


class _Wrapper(textwrap.TextWrapper):
    """Lines end at spaces and after commas, never inside a word: a dotted service name
    (grpc.health.v1.Health), a flag (--max-queue-images) or a path stays whole even when it is
    longer than the line. A comma-separated list without spaces breaks after its commas."""

    wordsep_simple_re = re.compile(r"(\s+|(?<=,)(?=[^\s,]))")

    def __init__(self, width: int):
        super().__init__(width, break_long_words=False, break_on_hyphens=False)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description's examples stay as written (line breaks kept); a flag's default is shown
    only where it says something: not for None, False or []; help text never breaks a word
    (_Wrapper)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return _Wrapper(width).wrap(self._whitespace_matcher.sub(" ", text).strip())


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
