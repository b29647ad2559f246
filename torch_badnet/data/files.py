"""File helpers: existence checks, sha256, and atomic writes (temporary name beside the target, then rename)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path

from ..errors import BadInputError
from .sha256_worker import sha256_of


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `target`, on failure removed.

    The temporary name ends in `target`'s suffix, so code that picks a format by suffix treats it like `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_beside(target, f".tmp{target.suffix}") as tmp:
        yield tmp
        os.replace(tmp, target)


@contextlib.contextmanager
def scratch_beside(target: Path, suffix: str, folder: bool = False) -> Iterator[Path]:
    """A new empty file (or folder) beside `target`, hidden, `.NAME.<64 random bits>SUFFIX`, with the usual
    permissions; whatever is left of it when the block ends is removed.

    The name is chosen before anything is made, and it is made inside the `try`: a Ctrl-C at any moment leaves
    nothing behind (tempfile.mkstemp and mkdtemp make theirs before the caller can take charge of it).
    """
    path = target.with_name(f"{_hidden(target)}.{secrets.token_hex(8)}{suffix}")
    while os.path.lexists(path):
        path = target.with_name(f"{_hidden(target)}.{secrets.token_hex(8)}{suffix}")
    ours: Path | None = path
    try:
        try:
            if folder:
                os.mkdir(path, 0o777)  # the umask applies
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:  # made by another process since the check: not ours to remove
            ours = None
            raise
        yield path
    finally:
        interrupted = None
        while ours is not None:  # removed even if Ctrl-C lands meanwhile (no call before the try: none between)
            try:
                with interrupts_held():  # not inside rmtree: it would stop halfway, closing a descriptor twice
                    remove_path(ours)
                ours = None
            except KeyboardInterrupt as exc:  # it landed before the hold took effect, or is raised at its end
                interrupted = exc
        if interrupted is not None:
            raise interrupted


def scratch_left_beside(target: Path, suffix: str) -> list[Path]:
    """What `scratch_beside(target, suffix)` made and a killed run left behind (that name pattern exactly)."""
    pattern = re.compile(rf"{re.escape(_hidden(target))}\.[0-9a-f]{{16}}{re.escape(suffix)}")
    try:
        return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []


def _hidden(target: Path) -> str:
    return target.name if target.name.startswith(".") else f".{target.name}"


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive in the block take effect when it ends, as they would have: for clean-up
    that must not stop halfway. (Python runs signal handlers in the main thread only: elsewhere, nothing to do.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    usual = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    usual = {signum: handler for signum, handler in usual.items() if handler not in (signal.SIG_IGN, None)}
    try:  # (`usual` is known before any swap: an interrupt during the swaps still restores every handler)
        for signum in usual:
            signal.signal(signum, lambda number, frame: arrived.append(number))
        yield
    finally:
        for signum, handler in usual.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])  # now handled as usual: KeyboardInterrupt, or the process ends


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def cache_dir() -> Path:
    """The user's cache folder for torch-badnet: $TORCH_BADNET_CACHE, else $XDG_CACHE_HOME/torch-badnet, else
    ~/.cache/torch-badnet (the demo's workspace and the live-column verdicts live there)."""
    base = os.environ.get("TORCH_BADNET_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = str(Path(xdg) / "torch-badnet") if xdg else str(Path.home() / ".cache" / "torch-badnet")
    return Path(base).expanduser()


def check_is_file(path: str | os.PathLike[str]) -> Path:
    """Return `path` as a Path, or raise BadInputError unless it is an existing, non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "no such file")
    if path.is_dir():
        raise BadInputError(path, "is a directory, expected a file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "file is empty")
    return path


def check_output_file(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], force: bool = False,
                      flag: str = "-o") -> Path:
    """`output` as a Path, or a BadInputError: when it is one of `inputs` (the same resolved path, or the same file
    through a hard or symbolic link), a folder, or an existing file while not `force`."""
    output = Path(output)
    try:
        out_stat = os.stat(output)
    except OSError:
        out_stat = None
    for path in inputs:
        same_path = os.path.realpath(path) == os.path.realpath(output)
        try:
            same_file = out_stat is not None and os.path.samestat(out_stat, os.stat(path))
        except OSError:
            same_file = False
        if same_path or same_file:
            raise BadInputError(output, f"is {path}, an input of this command; write the output ({flag}) to another file")
    if output.is_dir():
        raise BadInputError(output, f"is a folder; {flag} takes the output file's name")
    if output.exists() and not force:
        raise BadInputError(output, "exists; pass --force to replace it")
    return output


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (the result of `prefetch_sha256` when one was started for it)."""
    pending = _PREFETCHED.get(_file_key(path))
    if pending is not None:
        return pending.result()
    return sha256_of(path)


_PREFETCHED: dict[tuple[str, int, int], Future] = {}  # (real path, size, mtime_ns) -> its sha256, being computed
WORKER = Path(__file__).with_name("sha256_worker.py")
HASH_WORKERS = 4  # hashing child processes at most (and at most one per core)
HASHING = "processes"  # or "thread": one plain background thread in this process (scripts/bench_hashing.py compares them)


def prefetch_sha256(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Start hashing these files in child processes at the lowest CPU priority (`sha256_worker`), so the hashes
    (GBs for the lab's files) use the cycles the parent leaves idle (torch's import, the gaps between network
    passes); `file_sha256` then waits for them. The files are shared among up to `HASH_WORKERS` children by size,
    so what is left when the parent is done finishes on every core. Files that do not exist are skipped (the
    command reports them); a file a child cannot hash is hashed in this process when asked for."""
    jobs: dict[tuple[str, int, int], str] = {}
    for path in paths:
        key = _file_key(path)
        if key is not None and key not in _PREFETCHED and key not in jobs:
            jobs[key] = os.fspath(path)
    if HASHING == "thread":
        _start_worker([(jobs[key], _PREFETCHED.setdefault(key, Future())) for key in jobs], in_child=False)
        return
    workers = min(len(jobs), HASH_WORKERS, os.cpu_count() or 1)
    shares: list[list[tuple[str, Future]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    order = {key: place for place, key in enumerate(jobs)}
    for key in sorted(jobs, key=lambda k: -k[1]):  # largest first, each to the least loaded child
        lightest = loads.index(min(loads))
        loads[lightest] += key[1]
        shares[lightest].append(key)
    for share in shares:  # each child hashes its files in the caller's order (a command names first what it needs first)
        _start_worker([(jobs[key], _PREFETCHED.setdefault(key, Future())) for key in sorted(share, key=order.get)])


def _start_worker(share: list[tuple[str, Future]], in_child: bool = True) -> None:
    """One child hashing `share`'s files in order, and a thread handing its digests to their futures; with
    `in_child=False`, or where no child starts, that thread hashes them itself."""
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", str(WORKER), *(path for path, _ in share)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True) if in_child else None
    except (OSError, ValueError):  # no usable interpreter to start (an embedded Python): hash on demand
        child = None
    threading.Thread(target=_collect, args=(child, share), daemon=True, name="torch-badnet-sha256").start()


def _collect(child: subprocess.Popen | None, share: list[tuple[str, Future]]) -> None:
    """Hand each digest the child prints to its future; what the child could not hash is hashed here."""
    for path, future in share:
        line = child.stdout.readline().strip() if child is not None else ""
        if len(line) == 64 and all(c in "0123456789abcdef" for c in line):
            future.set_result(line)
            continue
        try:
            future.set_result(sha256_of(path))
        except BaseException as exc:  # raised where the digest is asked for
            future.set_exception(exc)
    if child is not None:
        child.stdout.close()
        child.wait()


def _file_key(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), info.st_size, info.st_mtime_ns
