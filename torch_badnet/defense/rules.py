"""The threshold rules' names, importable without torch (the CLI's --help lists them)."""

from __future__ import annotations

from typing import Literal

StopRule = Literal["first-over", "last-within"]
DropKind = Literal["absolute", "relative"]
STOP_RULES: tuple[StopRule, ...] = ("first-over", "last-within")  # the first is the default (the lab's rule)
DROP_KINDS: tuple[DropKind, ...] = ("absolute", "relative")  # the first is the default
