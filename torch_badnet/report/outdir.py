"""One output folder, one run: a command's whole result is staged beside --out, then swapped in for it.

`OutputFolder(out, force, inputs)` checks --out before any work and takes its lock (`FolderLock`: one
writer per folder; a second run into the same --out is refused). A missing or empty folder is fine, a folder
holding a result of this project (a summary.json that torch-badnet wrote) is replaced whole, anything else is
refused unless `force`, and then moved aside to `DIR.replaced-<time>` rather than deleted. `staging()` yields
an empty folder beside --out; when the block succeeds the old --out is renamed away, the staging folder renamed
to --out and the old one deleted (or kept aside), so --out ends holding exactly what a run into an empty folder
writes. A failed run leaves --out as it was. Use it as a context manager (or call `close()`) to release the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..data.files import interrupts_held, remove_path, scratch_beside, scratch_left_beside
from ..errors import BadInputError

MARKER = "summary.json"  # every result (sweep, demo, finetune) writes it, with versions.torch_badnet
LOCK_HEADER = "torch-badnet output lock"  # first line of every lock file we write; the second is "pid N"


def is_result(folder: Path) -> bool:
    """True if `folder` holds a torch-badnet result: a summary.json whose `versions` names torch_badnet."""
    try:
        content = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("versions"), dict) \
        and "torch_badnet" in content["versions"]


class FolderLock:
    """One writer per output folder: an exclusive `fcntl.flock` on `.<name>.lock` beside the folder, held until
    `release()` (or the process ends: the kernel drops a dead process's lock, so a killed run never blocks).

    The lock file holds LOCK_HEADER and the holder's pid (for the refusal's message). We create it, header
    included, by a hard link; a file of that name without the header (not ours) is refused, never overwritten.
    On release the holder deletes it while still holding the lock; a run that locked a file since deleted (or
    replaced) notices by its inode and retries.
    """

    def __init__(self, folder: Path, shown: str | os.PathLike[str]) -> None:
        self.path = folder.parent / f".{folder.name}.lock"
        self._shown = shown
        self._created = _make_parents(folder.parent)
        self._file = None
        try:
            self._acquire()
        except BaseException:
            self._remove_created()
            raise

    def _acquire(self) -> None:
        for _ in range(100):  # each retry means the file was created, deleted or replaced by another run meanwhile
            handle = self._open()
            if handle is None:
                continue
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise BadInputError(self._shown, f"is being written by another run (pid {self._holder()})") from None
            try:  # locked: still the file at our path?
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:
                handle.close()
                continue
            if not handle.read().startswith(LOCK_HEADER):  # every lock file we make has it from its creation on
                handle.close()
                raise BadInputError(self._shown, f"{self.path} beside it is not a torch-badnet lock file; "
                                                 "move it away to write this folder")
            handle.seek(0)
            handle.write(f"{LOCK_HEADER}\npid {os.getpid()}\n")
            handle.truncate()
            handle.flush()
            self._file = handle
            return
        raise BadInputError(self._shown, f"could not take its lock file {self.path}")

    def _open(self):
        """The lock file opened for reading and writing (made, complete with its header, if missing); None when
        another run made or deleted it meanwhile."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.fdopen(os.open(self.path, flags), "r+", encoding="utf-8")
        except FileNotFoundError:
            pass
        except OSError as exc:  # a symbolic link (ELOOP), no permission, ...
            raise BadInputError(self._shown, f"cannot open its lock file {self.path} ({exc.strerror})") from None
        try:  # written beside it, then linked into place: never visible without its header, never over a file
            with scratch_beside(self.path, ".tmp") as tmp:
                tmp.write_text(f"{LOCK_HEADER}\npid {os.getpid()}\n", encoding="utf-8")
                os.link(tmp, self.path)
        except FileExistsError:
            return None
        except OSError as exc:  # no permission, a file system without hard links, ...
            raise BadInputError(self._shown, f"cannot create its lock file {self.path} ({exc.strerror})") from None
        try:
            return os.fdopen(os.open(self.path, flags), "r+", encoding="utf-8")
        except FileNotFoundError:
            return None

    def _holder(self) -> str:
        """The pid the lock file names (its holder may not have written it yet: wait a moment)."""
        for _ in range(50):
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except OSError:
                lines = []
            if len(lines) >= 2 and lines[0] == LOCK_HEADER and lines[1].startswith("pid "):
                return lines[1][4:]
            time.sleep(0.01)
        return "unknown"

    def release(self) -> None:
        """Delete the lock file (ours: we hold its lock) and release it; remove parent folders we created if empty."""
        file, self._file = self._file, None  # released once, even if Ctrl-C lands below (then the lock file
        if file is None:                      # stays, as a killed run's does: the next run takes it)
            return
        with interrupts_held():
            try:
                if os.path.samestat(os.fstat(file.fileno()), os.stat(self.path, follow_symlinks=False)):
                    self.path.unlink()
            except OSError:
                pass
            file.close()  # closing the descriptor releases the flock
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):  # deepest first; only folders we made, and only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders this created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        created.append(path)
    return created


class OutputFolder:
    """--out of one run: checked and locked on creation (before any work), filled through `staging()`.

    A context manager: leaving the block (or `close()`) releases the lock.
    """

    def __init__(self, out: str | os.PathLike[str], force: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.path = Path(out)
        self.replaced: str | None = None  # what the run replaced: "result" or "folder" (with --force)
        self.moved_to: Path | None = None  # where --force moved a replaced non-result folder
        self._lock: FolderLock | None = None
        target = Path(os.path.realpath(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise BadInputError(out, "exists and is not a folder")
        if target == Path(target.anchor) or Path.cwd().resolve().is_relative_to(target):
            raise BadInputError(out, "is the current folder or one above it; write the result to a subfolder")
        for path in inputs:
            if Path(os.path.realpath(path)).is_relative_to(target):
                raise BadInputError(out, f"holds {path}, an input of this run; write the result to another folder")
        self._lock = FolderLock(target, out)  # checked below while no other run can change the folder
        try:
            for leftover in scratch_left_beside(target, ".staging"):  # a killed run's (only its holder stages)
                remove_path(leftover)
            self._existing = self.path.is_dir() and any(self.path.iterdir())
            holds_result = self._existing and is_result(self.path)
            if self._existing and not holds_result and not force:
                raise BadInputError(out, "is not empty and holds no torch-badnet result (no summary.json of ours); "
                                         "choose an empty or new folder, or pass --force to move it aside and replace it")
        except BaseException:
            self.close()
            raise
        self._kind = "result" if holds_result else "folder"

    def close(self) -> None:
        """Release --out's lock (at the latest the process's end does)."""
        lock = getattr(self, "_lock", None)  # (absent when __init__ failed early)
        if lock is not None:
            lock.release()
            self._lock = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty folder beside --out; swapped in for --out when the block succeeds, deleted otherwise."""
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        with scratch_beside(target, ".staging", folder=True) as staging:
            yield staging
            self._swap_in(staging, target)

    def _swap_in(self, staging: Path, target: Path) -> None:
        """Rename the old --out away, the staging folder in, then delete the old one (a previous result) or keep
        it aside as `DIR.replaced-<time>` (anything else, replaced with --force)."""
        if not target.exists():
            os.rename(staging, target)
            return
        if self._existing and self._kind == "folder":
            aside = _move_aside(target)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(aside, target)
                raise
            self.replaced = "folder"  # said as the user spelled --out, unless --out is a link to elsewhere
            self.moved_to = aside if self.path.is_symlink() else self.path.with_name(aside.name)
            return
        with scratch_beside(target, ".old", folder=True) as old:  # deleted with the previous --out in it
            try:
                os.rename(target, old / "out")
                os.rename(staging, target)
            except BaseException:
                if not os.path.lexists(target) and (old / "out").exists():
                    os.rename(old / "out", target)  # put the previous --out back
                raise
        if self._existing:
            self.replaced = self._kind

    def note(self) -> str | None:
        """'replaced R ...' when the run replaced a previous result (or, with --force, a folder)."""
        if self.replaced == "result":
            return f"replaced {self.path} (its previous result was removed whole)"
        if self.replaced == "folder":
            return f"replaced {self.path} (--force: its previous content was moved to {self.moved_to})"
        return None


def _move_aside(target: Path) -> Path:
    """Rename `target` to a new sibling `<name>.replaced-<YYYYmmdd-HHMMSS>[-N]`; never onto an existing name
    (the name is made as an empty folder first, which the rename then replaces, or fails if it is no longer empty)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        aside = target.with_name(f"{target.name}.replaced-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:  # made inside the try: a Ctrl-C right after mkdir still removes it
            try:
                aside.mkdir()
            except FileExistsError:
                continue
            os.rename(target, aside)
        except BaseException:
            with contextlib.suppress(OSError):  # rmdir removes it only while empty: ours, the rename undone
                aside.rmdir()
            raise
        return aside
    raise BadInputError(target, "found no free name to move it aside")


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
