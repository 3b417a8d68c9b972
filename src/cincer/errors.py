"""The one exception type users see for bad input."""


class CincerError(ValueError):
    """Bad input or configuration; the CLI prints its message on one line and exits 2."""
