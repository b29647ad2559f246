"""File helpers: existence checks, sha256, and atomic writes (temporary name beside the target, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import BadInputError


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (the result of `prefetch_sha256` when one was started for it)."""
    pending = _PREFETCHED.get(_file_key(path))
    if pending is not None:
        return pending.result()
    return _sha256_of(path)


HASH_BLOCK = 8 << 20  # bytes per read: large, so a hashing thread rarely waits for the GIL between blocks


def _sha256_of(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, `HASH_BLOCK` bytes at a time (hashlib releases the GIL while it hashes a block)."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while True:
            count = fh.readinto(buffer)
            if not count:
                return digest.hexdigest()
            digest.update(view[:count])


_PREFETCHED: dict[tuple[str, int, int], Future] = {}  # (real path, size, mtime_ns) -> its sha256, being computed
_HASHERS = ThreadPoolExecutor(2, thread_name_prefix="torch-badnet-sha256")


def prefetch_sha256(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Start hashing these files in two background threads at the lowest CPU priority (Linux), so the hashes
    (GBs for the lab's files) use the cycles the network leaves idle; `file_sha256` then waits for them. Files
    that do not exist are skipped (the command reports them)."""
    for path in paths:
        key = _file_key(path)
        if key is not None and key not in _PREFETCHED:
            _PREFETCHED[key] = _HASHERS.submit(_low_priority_sha256, path)


def _low_priority_sha256(path: str | os.PathLike[str]) -> str:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # on Linux a thread's nice value is its own
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    return _sha256_of(path)


def _file_key(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), info.st_size, info.st_mtime_ns
