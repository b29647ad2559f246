"""One output folder, one run: a command's whole result is staged beside --out, then swapped in for it.

`OutputFolder(out, force, inputs)` checks --out before any work: a missing or empty folder is fine, a folder
holding a result of this project (a summary.json that torch-badnet wrote) is replaced whole, anything else is
refused unless `force`. `staging()` yields an empty folder beside --out; when the block succeeds the old
--out is renamed away, the staging folder renamed to --out and the old one deleted, so --out ends holding
exactly what a run into an empty folder writes. A failed run leaves --out as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import BadInputError
from .files import current_umask

MARKER = "summary.json"  # every result (sweep, demo, finetune) writes it, with versions.torch_badnet


def is_result(folder: Path) -> bool:
    """True if `folder` holds a torch-badnet result: a summary.json whose `versions` names torch_badnet."""
    try:
        content = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("versions"), dict) \
        and "torch_badnet" in content["versions"]


class OutputFolder:
    """--out of one run: checked on creation (before any work), filled through `staging()`."""

    def __init__(self, out: str | os.PathLike[str], force: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.path = Path(out)
        self.replaced: str | None = None  # what the run replaced: "result" or "folder" (with --force)
        target = Path(os.path.realpath(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise BadInputError(out, "exists and is not a folder")
        if target == Path(target.anchor) or Path.cwd().resolve().is_relative_to(target):
            raise BadInputError(out, "is the current folder or one above it; write the result to a subfolder")
        for path in inputs:
            if Path(os.path.realpath(path)).is_relative_to(target):
                raise BadInputError(out, f"holds {path}, an input of this run; write the result to another folder")
        self._existing = self.path.is_dir() and any(self.path.iterdir())
        holds_result = self._existing and is_result(self.path)
        if self._existing and not holds_result and not force:
            raise BadInputError(out, "is not empty and holds no torch-badnet result (no summary.json of ours); "
                                     "choose an empty or new folder, or pass --force to replace it whole")
        self._kind = "result" if holds_result else "folder"

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty folder beside --out; swapped in for --out when the block succeeds, deleted otherwise."""
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
        try:
            yield staging
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders; give the usual permissions
            self._swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _swap_in(self, staging: Path, target: Path) -> None:
        """Rename the old --out away, the staging folder in, then delete the old one."""
        if not target.exists():
            os.rename(staging, target)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.rename(target, old / "out")
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old / "out", target)  # put the previous --out back
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        if self._existing:
            self.replaced = self._kind

    def note(self) -> str | None:
        """'replaced R ...' when the run replaced a previous result (or, with --force, a folder)."""
        if self.replaced == "result":
            return f"replaced {self.path} (its previous result was removed whole)"
        if self.replaced == "folder":
            return f"replaced {self.path} (--force: its previous content was removed)"
        return None


def written_files(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def describe_files(files: list[str]) -> str:
    """A short list of written files: 'sweep.csv, summary.json and models/X=2|4/pruned.pt|.h5'.

    Top-level files by name; files in folders `<parent>/<name>` grouped by parent, folders holding the same
    names merged as `<parent>/<a>|<b>`, and names with one stem and several suffixes as `stem.pt|.h5`.
    """
    top = [f for f in files if "/" not in f]
    folders: dict[str, list[str]] = {}
    for f in files:
        if "/" in f:
            parent, name = f.rsplit("/", 1)
            folders.setdefault(parent, []).append(name)
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for parent, names in folders.items():
        head, eq, value = parent.rpartition("=")  # models/X=2 -> ("models/X", "2"); folders without "=" stay whole
        key = (head + eq if eq else parent, tuple(names))
        groups.setdefault(key, []).append(value if eq else "")
    parts = [f"{head}{'|'.join(sorted(values, key=_number_first))}/{_merge_suffixes(names)}"
             for (head, names), values in groups.items()]
    items = top + parts
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _number_first(value: str) -> tuple[float, str]:
    try:
        return float(value), value
    except ValueError:
        return float("inf"), value


def _merge_suffixes(names: tuple[str, ...]) -> str:
    """('finetuned.h5', 'finetuned.pt', 'history.csv') -> 'finetuned.pt|.h5, history.csv'."""
    by_stem: dict[str, list[str]] = {}
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        by_stem.setdefault(stem if dot else name, []).append(f".{suffix}" if dot else "")
    order = {".pt": 0, ".h5": 1}
    return ", ".join(stem + "|".join(sorted(s, key=lambda x: (order.get(x, 2), x))) for stem, s in by_stem.items())
