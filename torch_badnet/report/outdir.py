"""One output folder, one run: a command's whole result is staged beside --out, then swapped in for it.

`OutputFolder(out, force, inputs)` checks --out before any work and takes its lock (`FolderLock`: one
writer per folder; a second run into the same --out is refused). A missing or empty folder is fine; a folder
holding only what torch-badnet wrote (every file listed, unchanged, in its FILES list, which every run writes
last) is replaced whole; a folder holding anything else (a user's file, even beside a result) is refused unless
`force`, and then moved aside whole to `DIR.replaced-<time>` rather than deleted, with a line saying so.
`staging()` yields an empty folder beside --out; when the block succeeds the old --out is renamed away, the
staging folder renamed to --out and the old one deleted (or kept aside), so --out ends holding exactly what a
run into an empty folder writes. A failed run leaves --out as it was. Use it as a context manager (or call
`close()`) to release the lock. Output files (convert, export) replaced with --force are kept aside the same
way (`previous_file_kept`).
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
FILES = ".torch-badnet-files"  # in every folder a run writes: the sha256 and path of each file it wrote (sha256sum's format)
LOCK_HEADER = "torch-badnet output lock"  # first line of every lock file we write; the second is "pid N"


def is_result(folder: Path) -> bool:
    """True if `folder` holds a torch-badnet result: a summary.json whose `versions` names torch_badnet."""
    try:
        content = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("versions"), dict) \
        and "torch_badnet" in content["versions"]


def write_file_list(folder: Path, names: Iterable[str] | None = None) -> None:
    """Record in `folder`/FILES the files a run wrote there (`names`, relative paths; default: every file under
    it): one `<sha256>  <path>` line each, as `sha256sum` writes them (`sha256sum -c .torch-badnet-files` checks
    them). What a later run may replace or remove without asking is exactly what this list holds, unchanged."""
    from ..data.files import write_text
    from ..data.sha256_worker import sha256_of

    names = sorted(names) if names is not None else [f for f in written_files(folder) if f != FILES]
    write_text(folder / FILES, "".join(f"{sha256_of(folder / name)}  {name}\n" for name in names))


def recorded_files(folder: Path) -> dict[str, str] | None:
    """{path: sha256} of `folder`/FILES, or None where there is no readable list."""
    try:
        lines = (folder / FILES).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    listed = {}
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            return None
        listed[name] = digest
    return listed


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` torch-badnet did not write (relative paths; a folder as `name/`): files missing from its
    FILES list or changed since, and folders, links or anything else holding no listed file. Without a list:
    everything in it."""
    from ..data.sha256_worker import sha256_of

    listed = recorded_files(folder)
    if listed is None:
        return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir())
    foreign = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = (base / name).as_posix()
            if (Path(root) / name).is_symlink() or not any(f.startswith(rel + "/") for f in listed):
                foreign.append(rel + "/")
                dirs.remove(name)
        for name in sorted(files):
            rel = (base / name).as_posix()
            if rel == FILES:
                continue
            path = Path(root) / name
            if rel not in listed or path.is_symlink() or not path.is_file() or sha256_of(path) != listed[rel]:
                foreign.append(rel)
    return sorted(foreign)


def name_some(entries: list[str], most: int = 3) -> str:
    """'a, b and c' or 'a, b, c and 4 more'."""
    shown = entries[:most]
    if len(entries) > most:
        return f"{', '.join(shown)} and {len(entries) - most} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


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
            foreign = foreign_entries(self.path) if self._existing else []
            if foreign and not force:
                raise BadInputError(out, refusal(self.path, foreign))
        except BaseException:
            self.close()
            raise
        self._kind = "folder" if foreign else "result"  # a result: every file in it written by torch-badnet

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
            write_file_list(staging)
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


def refusal(folder: Path, foreign: list[str], advice: bool = True) -> str:
    """Why a folder holding files torch-badnet did not write is not replaced without --force (`advice`: with
    what to do)."""
    force = "pass --force to move it aside (nothing is deleted) and replace it"
    if not is_result(folder):
        problem, fix = "is not empty and holds no torch-badnet result (no summary.json of ours)", "choose an empty or new folder"
    elif recorded_files(folder) is None:
        problem = f"holds a result without the list of the files torch-badnet wrote ({FILES}), so any file in it may be yours"
        fix = "move what you keep away"
    else:
        problem = f"holds {name_some(foreign)}, which torch-badnet did not write (or which changed since), beside its result"
        fix = f"move {'it' if len(foreign) == 1 else 'them'} away"
    return f"{problem}; {fix}, or {force}" if advice else problem


def move_aside(target: Path) -> Path:
    """Rename a file or folder `target` to a new sibling `<name>.replaced-<YYYYmmdd-HHMMSS>[-N]` (never onto an
    existing name); returns the new path."""
    if target.is_dir() and not target.is_symlink():
        return _move_aside(target)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        aside = target.with_name(f"{target.name}.replaced-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            os.link(target, aside, follow_symlinks=False)  # fails on an existing name: never overwrites
        except FileExistsError:
            continue
        with interrupts_held():
            target.unlink()
        return aside
    raise BadInputError(target, "found no free name to move it aside")


@contextlib.contextmanager
def previous_file_kept(output: Path, log) -> Iterator[None]:
    """--force over an existing output file (convert, export): the file stays in place until the block has
    written the new one, and is then kept as `<name>.replaced-<time>` (a hard link made first, so it is never
    lost, and removed again if the block fails); `log` gets the line saying where."""
    if not os.path.lexists(output):
        yield
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        aside = output.with_name(f"{output.name}.replaced-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            os.link(output, aside, follow_symlinks=False)
            break
        except FileExistsError:
            continue
    else:
        raise BadInputError(output, "found no free name to keep the previous file aside")
    try:
        yield
    except BaseException:
        with interrupts_held():
            aside.unlink()
        raise
    log(f"replaced {output} (--force: the previous file was kept as {aside})")


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
