"""The data of a batch, read once per machine and shared by every model that uses it.

The parent reads each lab file once (`data.shared_file.share_file`: LabDataset's reading, so the float32 pixels are
exactly the ones a single sweep reads, and a bad file gets the error a single sweep prints). Locally the pixels
go into a `.npy` file in a temporary folder the batch owns, which every worker maps a chunk at a time (one copy
in the page cache, none per model, and no worker holds the file); on Ray the `ReadFile` goes into the object
store once (`ray.put`), which workers read without a copy. A file that cannot be read becomes an error handle:
each model that uses it fails with that line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..data.shared_file import ReadFile, share_file
from ..errors import BadInputError

Handle = tuple[Any, ...]  # ("file", ReadFile) | ("ray", ReadFile ref) | ("error", path, problem)


def file_key(path: str | os.PathLike[str]) -> str:
    """The same file under any spelling of its path."""
    return os.path.realpath(path)


class SharedData:
    """Parent side: `add(path)` reads a file once; `handles` maps each file (`file_key`) to what workers open."""

    def __init__(self, ray: Any = None) -> None:
        self.ray = ray  # the ray module when the batch runs on Ray
        self.folder = None if ray else Path(tempfile.mkdtemp(prefix="torch-badnet-batch-"))
        self.handles: dict[str, Handle] = {}

    def add(self, path: str) -> None:
        key = file_key(path)
        if key in self.handles:
            return
        try:
            if self.ray is not None:
                self.handles[key] = ("ray", self.ray.put(share_file(path, None)))
            else:
                assert self.folder is not None
                self.handles[key] = ("file", share_file(path, self.folder / f"{len(self.handles)}.pixels.npy"))
        except BadInputError as exc:
            self.handles[key] = ("error", exc.path, exc.problem)

    def close(self) -> None:
        """Remove the temporary folder (local) or drop the references (Ray frees the objects)."""
        self.handles.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


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
