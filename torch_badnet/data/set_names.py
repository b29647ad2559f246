"""Names of input sets on the command line: [NAME=]PATH values for poisoned files, and unique names (no torch)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import BadInputError

TRIGGER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def check_unique(names: Sequence[str], where: str | None, problem: str) -> None:
    """BadInputError(where or the name, problem.format(name)) for the first name given twice."""
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise BadInputError(where or duplicate, problem.format(duplicate))


def parse_poisoned(values: Sequence[str], option: str) -> list[tuple[str, Path]]:
    """[NAME=]PATH values -> (trigger name or '', path); a plain PATH may be given once."""
    parsed: list[tuple[str, Path]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and TRIGGER_NAME.match(name) and not Path(value).exists():
            parsed.append((name, Path(path)))
        else:
            parsed.append(("", Path(value)))
    if len(parsed) > 1 and any(not n for n, _ in parsed):
        raise BadInputError(option, "several poisoned files need a NAME=PATH form each")
    check_unique([n for n, _ in parsed], option, "trigger name '{}' is given twice")
    return parsed


def npy_pair(value: str | os.PathLike[str], base: Path | None = None) -> tuple[Path, Path] | None:
    """`IMAGES.npy,LABELS.npy` as its two paths (each under `base`, when given); None for any other value (an
    existing path is never split)."""
    text = os.fspath(value)
    if "," not in text or os.path.exists(text if base is None else base / text):
        return None
    parts = text.split(",")
    if len(parts) == 2 and all(part.lower().endswith(".npy") for part in parts):
        return Path(parts[0]) if base is None else base / parts[0], Path(parts[1]) if base is None else base / parts[1]
    return None


def data_files(value: str | os.PathLike[str]) -> list[Path]:
    """The files (or folder) a data flag's value names: both files of an .npy pair, else the path itself."""
    pair = npy_pair(value)
    return list(pair) if pair is not None else [Path(value)]
