"""sha256 of files, in a child process: `python sha256_worker.py FILE...` prints one hex digest per line.

`files.prefetch_sha256` runs this script (standard library only, so it starts in milliseconds) at the lowest
CPU priority while the parent imports torch and runs the network: a child has its own GIL, so the hashing
(GBs for the lab's files) fills an idle core at full speed, where a thread in the parent got half of it.
A file it cannot read prints `-` (the parent then hashes it itself and reports the error). The child stops
as soon as its parent is gone.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable

HASH_BLOCK = 8 << 20  # bytes per read


def sha256_of(path: str | os.PathLike[str], keep_going: Callable[[], bool] = lambda: True) -> str:
    """sha256 of a file, `HASH_BLOCK` bytes at a time (hashlib releases the GIL while it hashes a block);
    stops with InterruptedError once `keep_going()` is false."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while True:
            count = fh.readinto(buffer)
            if not count:
                return digest.hexdigest()
            digest.update(view[:count])
            if not keep_going():
                raise InterruptedError("the parent process is gone")


def run_when_idle() -> None:
    """Lowest CPU priority: on Linux SCHED_IDLE (only cycles no other task wants), elsewhere nice 19."""
    try:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif hasattr(os, "nice"):
            os.nice(19)
    except OSError:
        pass


def main(paths: list[str]) -> int:
    parent = os.getppid()
    run_when_idle()
    for path in paths:
        try:
            line = sha256_of(path, lambda: os.getppid() == parent)
        except InterruptedError:
            return 1
        except OSError:
            line = "-"
        try:
            print(line, flush=True)
        except (BrokenPipeError, OSError):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
