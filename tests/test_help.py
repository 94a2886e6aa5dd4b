"""Every command's --help explains every flag (torchvision's rule: type, default and help text),
without breaking a word, and its --version prints the project's version."""

import importlib
import os
import subprocess
import sys

import pytest

from cli_text import VERSION
from tests.conftest import REPO

PARSERS = {"trainer": "trainer.cli", "exporter": "exporter.cli", "server": "server.cli",
           "client": "client.predict", "reporting": "reporting.cli"}
COMMANDS = {"trainer": ["-m", "trainer"], "exporter": ["-m", "exporter"],
            "server": ["-m", "server"], "client": ["client/predict.py"],
            "reporting": ["-m", "reporting"]}


@pytest.mark.parametrize("name", PARSERS)
def test_every_flag_has_help(name):
    parser = importlib.import_module(PARSERS[name]).get_args_parser()
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not missing, f"{name}: no help text for {missing}"
    assert parser.format_help()


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_no_meaningless_defaults(name):
    """'(default: None)' or '(default: False)' tells a reader nothing; the help says what happens."""
    text = importlib.import_module(PARSERS[name]).get_args_parser().format_help()
    for empty in ("(default: None)", "(default: False)", "(default: [])"):
        assert empty not in " ".join(text.split()), f"{name} --help shows {empty}"


def run(name: str, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    """The command as a person runs it, from the repository root, in a terminal this wide."""
    return subprocess.run([sys.executable, *COMMANDS[name], *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": str(columns)})


@pytest.mark.parametrize("name", COMMANDS)
def test_version_prints_the_projects_version(name):
    out = run(name, "--version")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == f"{importlib.import_module(PARSERS[name]).get_args_parser().prog} " \
                         f"(fmnist-serve) {VERSION}\n"


def test_the_server_reports_the_same_version():
    import server

    assert server.__version__ == VERSION  # v2 ServerMetadata: tests/server/api/grpc/test_kserve.py


def unbroken(wide: str, narrow: str) -> list[str]:
    """The words of `wide` (help text on one line each; a comma-separated list counts as its
    items) that are not whole in any word of `narrow`: the words a narrower help broke."""
    words = {w for token in wide.split() for w in token.split(",") if w}
    return sorted(w for w in words if not any(w in token for token in narrow.split()))


@pytest.mark.parametrize("name", PARSERS)
def test_help_breaks_lines_between_words_never_inside_one(name, monkeypatch):
    """`python -m server --help` once broke grpc.health.v1.Health into "grpc.hea" "lth.v1..."."""
    def text(columns: int) -> str:
        monkeypatch.setenv("COLUMNS", str(columns))
        return importlib.import_module(PARSERS[name]).get_args_parser().format_help()

    wide = text(1000)
    for columns in (60, 80, 100):
        assert unbroken(wide, text(columns)) == [], f"{name} --help at {columns} columns"


def test_server_help_keeps_the_service_names_whole():
    out = run("server", "--help", columns=80)
    assert out.returncode == 0
    names = ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
             "grpc.reflection.v1.ServerReflection"]
    assert unbroken(" ".join(names), out.stdout) == [], out.stdout


# Each command's tests live in its folders (the server's fleet tests start replicas too); a test
# file "runs the command" when it holds one of these (the helpers that start it as a subprocess, or the command line itself).
ENTRY_POINTS = {
    "server": ("server.cli", "tests/server tests/fleet",
               ("ServerProcess(", '"-m", "server"', "as_user.py", "Fleet(")),
    "trainer": ("trainer.cli", "tests/trainer", ("run_trainer(", '"-m", "trainer"')),
    "exporter": ("exporter.cli", "tests/exporter", ("run_exporter(", "start_exporter(",
                                                    '"-m", "exporter"')),
    "client": ("client.predict", "tests/client", ("predict(", "predict.py")),
    "reporting": ("reporting.cli", "tests/reporting", ('"-m", "reporting"',)),
}


def untested_flags(parser, test_files: dict[str, str], markers: tuple[str, ...]) -> list[str]:
    """The long options of `parser` that no test file running the command names in quotes
    (--help and --version, which every command shares, are run above)."""
    running = [text for text in test_files.values() if any(m in text for m in markers)]
    flags = [s for a in parser._actions for s in a.option_strings
             if s.startswith("--") and s not in ("--help", "--version")]
    return [f for f in flags if not any(f'"{f}"' in text for text in running)]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_flag_is_named_by_a_test_that_runs_the_command(name):
    """A flag is done when a test runs the real command with it and looks at its effect; this
    keeps a new flag from landing without one (the tests' own assertions say what they check)."""
    from tests.conftest import REPO

    module, folder, markers = ENTRY_POINTS[name]
    files = {str(p): p.read_text() for f in folder.split() for p in (REPO / f).rglob("*.py")}
    parser = importlib.import_module(module).get_args_parser()
    assert untested_flags(parser, files, markers) == [], f"{name}: flags no command-line test names"


def test_the_flag_check_finds_a_flag_that_only_a_library_test_names():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--poll-seconds")
    parser.add_argument("--grace")
    files = {"test_cli.py": 'ServerProcess("--grace", "1")',
             "test_lib.py": 'create_server(poll_seconds=1)  # "--poll-seconds"'}
    assert untested_flags(parser, files, ("ServerProcess(",)) == ["--poll-seconds"]
