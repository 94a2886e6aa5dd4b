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
