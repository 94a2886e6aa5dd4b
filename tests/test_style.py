"""Functions a reader can hold in mind: none over 60 lines, none with more than 8 positional
parameters (a small state object instead, as torchvision's references pass `args`). The argparse
builders are exempt: a flag a line is their point."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

MAX_LINES = 60
MAX_POSITIONAL = 8
PARSER_BUILDERS = {"get_args_parser", "add_args"}
PACKAGES = ("trainer", "exporter", "server", "client", "reporting", "bench", "scripts", "harness")


def long_functions(path: Path) -> list[str]:
    """'file:line name (N lines, M positional)' for each function over a limit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name in PARSER_BUILDERS:
            continue
        lines = node.end_lineno - node.lineno + 1
        positional = [a.arg for a in node.args.posonlyargs + node.args.args
                      if a.arg not in ("self", "cls")]
        if lines > MAX_LINES or len(positional) > MAX_POSITIONAL:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines, "
                         f"{len(positional)} positional)")
    return found


def test_no_function_is_longer_than_a_screen_or_takes_too_many_positional_parameters():
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    files += sorted(REPO.glob("*.py"))
    assert files
    assert [f for path in files for f in long_functions(path)] == []


def test_the_check_sees_a_long_function_and_a_long_parameter_list(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    path = tmp_path / "m.py"
    path.write_text(f"def long():\n{body}\n\n"
                    "def many(a, b, c, d, e, f, g, h, i):\n    pass\n\n"
                    "def ok(self, a, b, c, d, e, f, g, h, *, i=1):\n    pass\n\n"
                    f"def get_args_parser():\n{body}\n")
    assert [f.split(" ")[1] for f in long_functions(path)] == ["long", "many"]
