"""What the command line parses before torch is imported: the threshold rules' names (--help lists them) and
the NAME=PATH form of poisoned files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

StopRule = Literal["first-over", "last-within"]
DropKind = Literal["absolute", "relative"]
STOP_RULES: tuple[StopRule, ...] = ("first-over", "last-within")  # the first is the default (the lab's rule)
DROP_KINDS: tuple[DropKind, ...] = ("absolute", "relative")  # the first is the default

TRIGGER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def split_trigger(value: str) -> tuple[str, Path]:
    """A poisoned file's [NAME=]PATH value -> (trigger name or '', path). NAME=PATH counts as named only when
    NAME is a trigger name and VALUE is not itself an existing file."""
    name, sep, path = value.partition("=")
    if sep and TRIGGER_NAME.match(name) and not Path(value).exists():
        return name, Path(path)
    return "", Path(value)
