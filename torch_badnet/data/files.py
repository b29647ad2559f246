"""File helpers: existence checks, sha256, and atomic writes (temporary name beside the target, then rename)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
