"""Every error cincer raises on purpose derives from :class:`CincerError`.

The CLI prints a ``CincerError`` on one line and exits 2; the app maps ``NotFoundError`` to 404 and
``ConflictError`` to 409; anything else is a bug.
"""

from __future__ import annotations


class CincerError(ValueError):
    """Bad input or configuration, reported on one line; nothing was changed."""


class InputError(CincerError):
    """Bad data or labels: NaN/inf features, unknown labels, a single class, mismatched lengths."""


class ModelError(CincerError):
    """A model cincer cannot wrap (its last layer is not linear, an unsupported type, ...)."""


class QueryError(CincerError):
    """An answer to a query that does not exist, was already answered, or a label it cannot take."""


class NotFoundError(CincerError):
    """An unknown id (query, decision, example)."""


class ConflictError(CincerError):
    """A change that clashes with the current state (e.g. a query already answered); ``decision`` is the
    stored decision it clashed with, if any."""

    def __init__(self, message: str, decision: dict | None = None) -> None:
        super().__init__(message)
        self.decision = decision


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (shortened): how an error from outside is reported in ours."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
