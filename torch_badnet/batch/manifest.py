"""`torch-badnet batch`'s manifest: a CSV with one row per model, read and checked before anything runs.

Columns: `name` and `model` (required), `clean_valid`, `poisoned_valid`, `clean_test`, `poisoned_test` (data
files; several poisoned sets as space-separated [NAME=]PATH), and any `sweep` option under its flag name
without dashes (`thresholds`, `rescale`, `finetune`, `max_steps` ...). Empty cells take the batch's own flags
(the sweep's defaults unless given). Relative paths resolve against the manifest's folder. Rows are counted
as in a spreadsheet: the header is row 1. Torch-free: the parser of `sweep` itself reads every option cell, so
a cell means exactly what the flag means.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.set_names import data_files, npy_pair
from ..errors import BadInputError

REQUIRED = ("name", "model")
DATA_COLUMNS = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")
MULTI_DATA = ("poisoned_valid", "poisoned_test")  # space-separated [NAME=]PATH lists
BATCH_LEVEL = {"help", "force", "verbose", "device", "out", "model"}  # sweep flags that are the batch's, not a row's
RESERVED_NAMES = {"batch.csv", "batch.json", "batch.png"}
TRUE, FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


class ManifestParseError(Exception):
    """argparse's complaint about one cell (raised instead of exiting)."""


class _CellParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ManifestParseError(message)


@dataclass
class BatchItem:
    """One manifest row: the model's name (its folder in DIR), its files and its sweep options (argparse dests)."""

    name: str
    row: int
    model: str
    data: dict[str, Any]  # clean_valid/clean_test: a path or None; poisoned_*: a list of [NAME=]PATH or None
    options: dict[str, Any]

    def files(self) -> list[str]:
        """The model and data files (paths as the row gives them, resolved against the manifest's folder)."""
        from ..data.set_names import parse_poisoned

        paths = [self.model, self.data["clean_valid"], self.data["clean_test"]]
        for column in MULTI_DATA:
            paths += [str(p) for _, p in parse_poisoned(self.data[column] or [], f"--{column.replace('_', '-')}")]
        return [p for p in paths if p is not None]


PASSED_THROUGH = ("--layer", "--rank-on")  # prune_sweep keywords a row may set even where `sweep` has no such flag yet


def option_parser() -> argparse.ArgumentParser:
    """The sweep's options: every optional flag of `torch-badnet sweep` itself (so a flag added to sweep is a
    column at once), parsed cell by cell; plus PASSED_THROUGH where sweep lacks them."""
    from ..cli.commands import sweep

    commands = argparse.ArgumentParser().add_subparsers()
    sweep.add_parser(commands)
    parser = _CellParser(prog="sweep", add_help=False)
    for action in commands.choices["sweep"]._actions:
        if action.option_strings and not action.required and action.dest != "help":
            parser._add_action(action)
    known = {flag for action in parser._actions for flag in action.option_strings}
    for flag in PASSED_THROUGH:
        if flag not in known:
            parser.add_argument(flag, default=None)
    return parser


def option_columns(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{column name: the flag's action}: `--max-steps` -> `max_steps`, `--seed` -> `seed`."""
    columns = {}
    for action in parser._actions:  # argparse keeps no public list of its flags
        for flag in action.option_strings:
            if flag.startswith("--"):
                column = flag[2:].replace("-", "_")
                if column not in BATCH_LEVEL and column not in DATA_COLUMNS:
                    columns[column] = action
    return columns


def cell_argv(column: str, action: argparse.Action, text: str) -> list[str]:
    """The command-line words a cell stands for ('true'/'false' for on/off flags, space-separated lists)."""
    flag = action.option_strings[-1]
    if action.nargs == 0:  # store_true
        value = text.lower()
        if value not in TRUE | FALSE:
            raise ManifestParseError(f"{text!r} is not true or false")
        return [flag] if value in TRUE else []
    words = shlex.split(text)
    if action.nargs in ("+", "*"):
        return [flag, *words]
    if len(words) != 1:
        raise ManifestParseError(f"{text!r} is not one value")
    return [f"{flag}={words[0]}"]  # '=' keeps values such as -1 or 1/255 from reading as flags


def read_manifest(path: str | os.PathLike[str], defaults: dict[str, Any]) -> list[BatchItem]:
    """The manifest's rows, checked: columns known, names unique and usable as folder names, files present,
    option cells valid. `defaults` fills empty cells: data columns and option dests (the batch's flags).
    Raises BadInputError `MANIFEST: row R, column C: problem`."""
    from ..data.files import check_is_file

    manifest = check_is_file(path)
    parser = option_parser()
    columns = option_columns(parser)
    base = {action.dest: action.default for action in columns.values()}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(manifest, f"not a readable CSV file ({exc})") from None
    _check_header(manifest, header, columns)
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) > len(header):
            raise BadInputError(manifest, f"row {line}: {len(cells)} cells but the header names {len(header)} columns")
        row = {h: c.strip() for h, c in zip(header, cells)}
        item = _item(manifest, line, row, parser, columns, {**base, **defaults})
        if item.name in seen:
            raise BadInputError(manifest, f"row {line}, column name: {item.name!r} is also the name of row {seen[item.name]}")
        seen[item.name] = line
        items.append(item)
    if not items:
        raise BadInputError(manifest, "no model rows below the header")
    return items


def _check_header(manifest: Path, header: list[str], columns: dict[str, argparse.Action]) -> None:
    for column in REQUIRED:
        if column not in header:
            raise BadInputError(manifest, f"column {column!r} is missing (required: {', '.join(REQUIRED)})")
    known = set(REQUIRED) | set(DATA_COLUMNS) | set(columns)
    for column in header:
        if column not in known:
            raise BadInputError(manifest, f"column {column!r} is not a sweep option or data column "
                                          f"(known: {', '.join([*REQUIRED, *DATA_COLUMNS, *sorted(columns)])})")
        if header.count(column) > 1:
            raise BadInputError(manifest, f"column {column!r} appears twice")


def _item(manifest: Path, line: int, row: dict[str, str], parser: argparse.ArgumentParser,
          columns: dict[str, argparse.Action], defaults: dict[str, Any]) -> BatchItem:
    def bad(column: str, problem: str) -> BadInputError:
        return BadInputError(manifest, f"row {line}, column {column}: {problem}")

    name = row.get("name", "")
    if not name:
        raise bad("name", "empty (every model needs a name: its folder in the output)")
    if "/" in name or "\\" in name or name.startswith(".") or name in RESERVED_NAMES:
        raise bad("name", f"{name!r} cannot be a folder name here (no slashes, no leading dot, not batch.csv/json/png)")
    folder = manifest.parent

    def resolve(text: str, column: str) -> str:
        target = folder / text
        if not target.is_file():
            if column in DATA_COLUMNS and target.is_dir():  # an image folder
                return str(target)
            pair = npy_pair(text, folder) if column in DATA_COLUMNS else None  # IMAGES.npy,LABELS.npy
            if pair is not None:
                return ",".join(resolve(str(part.relative_to(folder)), column) for part in pair)
            raise bad(column, f"no such file {target}")
        return str(target)

    if not row.get("model"):
        raise bad("model", "empty")
    model = resolve(row["model"], "model")
    data: dict[str, Any] = {}
    for column in DATA_COLUMNS:
        text = row.get(column, "")
        if not text:
            data[column] = defaults.get(column)  # the batch's flag: paths as given on the command line
            if data[column] is not None:
                _check_files(data[column], column, bad)
        elif column in MULTI_DATA:
            data[column] = [_resolve_named(word, column, folder, resolve) for word in shlex.split(text)]
        else:
            data[column] = resolve(text, column)
    options = {dest: value for dest, value in defaults.items() if dest not in DATA_COLUMNS}
    for column, action in columns.items():
        text = row.get(column, "")
        if not text:
            continue
        try:
            parsed = parser.parse_args(cell_argv(column, action, text))
        except ManifestParseError as exc:
            raise bad(column, str(exc)) from None
        options[action.dest] = getattr(parsed, action.dest)
    if data["clean_valid"] is None or not (data["poisoned_valid"] or options.get("trigger")):
        missing = "clean_valid" if data["clean_valid"] is None else "poisoned_valid"
        either = " (nor a trigger column)" if missing == "poisoned_valid" else ""
        raise bad(missing, f"empty and no --{missing.replace('_', '-')} given to batch{either}")
    return BatchItem(name, line, model, data, options)


def _resolve_named(word: str, column: str, folder: Path, resolve) -> str:
    """[NAME=]PATH with PATH resolved against the manifest's folder (NAME= read as `set_names.parse_poisoned` does)."""
    from ..data.set_names import TRIGGER_NAME

    name, sep, path = word.partition("=")
    if sep and TRIGGER_NAME.match(name) and not (folder / word).exists():
        return f"{name}={resolve(path, column)}"
    return resolve(word, column)


def _check_files(value: Any, column: str, bad) -> None:
    """The batch's own data flag: every file it names exists (paths as given, against the current folder)."""
    from ..data.set_names import parse_poisoned

    flag = f"--{column.replace('_', '-')}"
    paths = [p for _, p in parse_poisoned(value, flag)] if column in MULTI_DATA else [Path(value)]
    for path in (f for p in paths for f in data_files(p)):
        if not (path.is_file() or path.is_dir()):
            raise bad(column, f"no such file {path} (from {flag})")
