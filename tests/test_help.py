"""Every command's --help explains every flag (torchvision's rule: type, default and help text)."""

import importlib

import pytest

PARSERS = {"trainer": "trainer.cli", "exporter": "exporter.cli", "server": "server.cli",
           "client": "client.predict"}


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


# Each command's tests live in one folder; a test file "runs the command" when it holds one of
# these (the helpers that start it as a subprocess, or the command line itself).
ENTRY_POINTS = {
    "server": ("server.cli", "tests/server", ("ServerProcess(", '"-m", "server"', "as_user.py")),
    "trainer": ("trainer.cli", "tests/trainer", ("run_trainer(", '"-m", "trainer"')),
    "exporter": ("exporter.cli", "tests/exporter", ("run_exporter(", "start_exporter(",
                                                    '"-m", "exporter"')),
    "client": ("client.predict", "tests/client", ("predict(", "predict.py")),
    "reporting": ("reporting.cli", "tests/reporting", ('"-m", "reporting"',)),
}


def untested_flags(parser, test_files: dict[str, str], markers: tuple[str, ...]) -> list[str]:
    """The long options of `parser` that no test file running the command names in quotes."""
    running = [text for text in test_files.values() if any(m in text for m in markers)]
    flags = [s for a in parser._actions for s in a.option_strings
             if s.startswith("--") and s != "--help"]
    return [f for f in flags if not any(f'"{f}"' in text for text in running)]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_flag_is_named_by_a_test_that_runs_the_command(name):
    """A flag is done when a test runs the real command with it and looks at its effect; this
    keeps a new flag from landing without one (the tests' own assertions say what they check)."""
    from tests.conftest import REPO

    module, folder, markers = ENTRY_POINTS[name]
    files = {str(p): p.read_text() for p in (REPO / folder).rglob("*.py")}
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
