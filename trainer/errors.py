"""The one error the command line reports as the user's: exit 2, one line, no traceback."""


class UsageError(ValueError):
    """What the command asks for cannot run as given: a flag's value, a device that is not
    there, a batch that does not split over the processes, a last.pt that cannot be resumed.
    Every other exception is a bug and keeps its traceback (exit 1)."""
