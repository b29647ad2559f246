"""The one exception type that reaches users as `error: <file>: <problem>`."""

from __future__ import annotations

import re
from os import PathLike

# terminal escape sequences (colours, bold: torch's \x1b[1m) and other control characters a foreign message may hold
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class BadInputError(Exception):
    """A user-supplied file (or argument) that cannot be used, with the reason.

    >>> try:
    ...     tb.load_model("missing.h5")
    ... except tb.BadInputError as exc:
    ...     print(exc)                         # missing.h5: no such file
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = one_line(str(path))
        self.problem = one_line(problem)  # what a foreign exception lent it: no escape codes, one line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled as (path, problem), so it crosses to and from worker processes (a pool, Ray) intact."""
        return (type(self), (self.path, self.problem))


class InputShapeError(BadInputError, ValueError):
    """A tensor of the wrong shape given to a net (one image without its batch axis, channels last): a
    BadInputError line, and a ValueError for code that catches those."""


def plain(text: str) -> str:
    """`text` without terminal escape codes and control characters (tabs and newlines kept)."""
    return _ESCAPES.sub("", text)


def one_line(text: str) -> str:
    """`text` as plain text on one line (line breaks and the indentation after them become one space)."""
    return re.sub(r"\s*[\r\n]\s*", " ", plain(text)).strip()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), as plain text, for one-line error reports."""
    text = plain(str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
