"""The exporter's one error type: its message is one line that says what to do next."""


class ExportError(Exception):
    """An export that cannot or must not be written; nothing was written for it."""
