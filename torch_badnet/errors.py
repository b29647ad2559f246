"""The one exception type that reaches users as `error: <file>: <problem>`."""

from __future__ import annotations

from os import PathLike


class BadInputError(Exception):
    """A user-supplied file (or argument) that cannot be used, with the reason.

    >>> try:
    ...     tb.load_model("missing.h5")
    ... except tb.BadInputError as exc:
    ...     print(exc)                         # missing.h5: no such file
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled as (path, problem), so it crosses to and from worker processes (a pool, Ray) intact."""
        return (type(self), (self.path, self.problem))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line error reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
