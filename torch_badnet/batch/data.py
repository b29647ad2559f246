"""The data of a batch, read once per machine and shared by every model that uses it.

Each lab file is read once (`data.shared_file.share_file`: LabDataset's reading, so the float32 pixels are
exactly the ones a single sweep reads, and a bad file gets the error a single sweep prints). Locally the pixels
go into a `.npy` file in a temporary folder the batch owns, which every worker maps a chunk at a time (one copy
in the page cache, none per model, and no worker holds the file); the pool's workers convert the files, side by
side and before any model runs, so the parent never holds the conversion's buffers. On Ray the parent puts the
`ReadFile` into the object store once (`ray.put`), which workers read without a copy. A file that cannot be read
becomes an error handle: each model that uses it fails with that line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..data.shared_file import ReadFile, share_file
from ..errors import BadInputError

Handle = tuple[Any, ...]  # ("file", ReadFile) | ("ray", ReadFile ref) | ("error", path, problem)


def file_key(path: str | os.PathLike[str], classes: Sequence[str] | None = None) -> str:
    """The same file under any spelling of its path; an image folder once per label order (`classes`, --classes)."""
    key = os.path.realpath(path)
    return key if classes is None or not os.path.isdir(key) else f"{key}?classes={','.join(classes)}"


class SharedData:
    """Parent side: `add(path)` has a file read once; `handles_for(paths)` gives what workers open for them
    (`file_key` -> handle), waiting for their conversion. `pool` (a local pool with `submit` and `broken`):
    convert there; without one, or after the pool broke (said through `log`), the parent converts."""

    def __init__(self, ray: Any = None, pool: Any = None, log: Callable[[str], None] = lambda line: None) -> None:
        self.ray, self.pool, self.log = ray, pool, log  # the ray module when the batch runs on Ray
        self.folder = None if ray else Path(tempfile.mkdtemp(prefix="torch-badnet-batch-"))
        self.handles: dict[str, Handle] = {}
        self.converting: dict[str, tuple[str, Path, Future]] = {}

    def add(self, path: str, classes: Sequence[str] | None = None) -> None:
        key = file_key(path, classes)
        if key in self.handles or key in self.converting:
            return
        if self.ray is not None:
            self.handles[key] = _handle("ray", lambda p: self.ray.put(share_file(p, None, classes=classes)), path)
            return
        assert self.folder is not None
        npy = self.folder / f"{len(self.handles) + len(self.converting)}.pixels.npy"
        if self.pool is not None and not self.pool.broken:
            try:
                self.converting[key] = (path, npy, self.pool.submit(share_in_worker, path, npy, classes))
                return
            except BrokenProcessPool:
                self._pool_died(path)
        self.handles[key] = _handle("file", share_file, path, npy, True, classes)

    def handles_for(self, paths: list[str], classes: Sequence[str] | None = None) -> dict[str, Handle]:
        keys = {file_key(p, classes) for p in paths}
        for key in keys & self.converting.keys():
            path, npy, future = self.converting.pop(key)
            try:
                self.handles[key] = ("file", future.result())
            except BadInputError as exc:
                self.handles[key] = ("error", exc.path, exc.problem)
            except BrokenProcessPool:  # a worker died converting: the parent reads it; a fresh pool runs the models
                self._pool_died(path)
                self.handles[key] = _handle("file", share_file, path, npy, True, classes)
        return {k: h for k, h in self.handles.items() if k in keys}

    def _pool_died(self, path: str) -> None:
        if not self.pool.broken:
            self.log(f"a worker process died reading {path}: reading the data here, the models in fresh workers")
        self.pool.broken = True

    def close(self) -> None:
        """Remove the temporary folder (local) or drop the references (Ray frees the objects)."""
        self.handles.clear()
        self.converting.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def share_in_worker(path: str, npy: Path, classes: Sequence[str] | None = None) -> ReadFile:
    """`share_file` in a pool worker, which then hands the conversion's freed buffers back to the system. In this
    thread: a reading thread's malloc arena would keep two chunks (60 MB at the lab's size) after it ends, dead
    weight at the peak of every model the worker then runs."""
    try:
        return share_file(path, npy, read_ahead=False, classes=classes)
    finally:
        trim_heap()


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim), so a worker that converted a file or
    swept a model does not keep that peak while it waits or runs the next one; elsewhere nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _handle(kind: str, read: Any, *args: Any) -> Handle:
    """(kind, read(*args)), or the error handle of the BadInputError it raises."""
    try:
        return (kind, read(*args))
    except BadInputError as exc:
        return ("error", exc.path, exc.problem)


def open_file(handle: Handle) -> ReadFile:
    """Worker side: the shared file (`prune_sweep` opens it as a `data.shared_file.SharedSet`, reading nothing);
    an error handle raises the file's BadInputError."""
    kind = handle[0]
    if kind == "error":
        raise BadInputError(handle[1], handle[2])
    if kind == "file":
        return handle[1]
    import ray

    return ray.get(handle[1])
