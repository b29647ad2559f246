"""The data of a batch, read once per machine and shared by every model that uses it.

The parent reads each lab file once, through `LabDataset` (so the float32 pixels are exactly the ones a
single sweep reads, and a bad file gets the error a single sweep prints). Locally the pixels go into a `.npy`
file in a temporary folder the batch owns, which every worker maps (copy-on-write: one copy in the page cache,
none per model); on Ray they go into the object store once (`ray.put`), which workers read without a copy.
A file that cannot be read becomes an error handle: each model that uses it fails with that line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..nets.badnet import INPUT_SHAPE

Handle = tuple[Any, ...]  # ("file", pixels.npy, labels.npy) | ("ray", pixels ref, labels ref) | ("error", path, problem)


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
        from ..data.lab_sets import LabDataset

        try:
            with LabDataset(path) as ds:
                self.handles[key] = self._store(ds, len(self.handles))
        except BadInputError as exc:
            self.handles[key] = ("error", exc.path, exc.problem)

    def _store(self, ds: Any, index: int) -> Handle:
        shape = (len(ds), *INPUT_SHAPE)
        if self.ray is not None:
            pixels = np.empty(shape, np.float32)
            _fill(pixels, ds)
            return "ray", self.ray.put(pixels), self.ray.put(ds.labels)
        assert self.folder is not None
        pixels_file, labels_file = self.folder / f"{index}.pixels.npy", self.folder / f"{index}.labels.npy"
        mapped = np.lib.format.open_memmap(pixels_file, mode="w+", dtype=np.float32, shape=shape)
        _fill(mapped, ds)
        mapped.flush()
        del mapped
        np.save(labels_file, ds.labels)
        return "file", str(pixels_file), str(labels_file)

    def close(self) -> None:
        """Remove the temporary folder (local) or drop the references (Ray frees the objects)."""
        self.handles.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _fill(pixels: np.ndarray, ds: Any) -> None:
    start = 0
    for x, _ in ds.chunks():
        pixels[start : start + x.shape[0]] = x.numpy()
        start += x.shape[0]


def open_file(handle: Handle, path: str):
    """Worker side: the shared pixels and labels of one file as a `pipeline.ReadFile` named `path`, without a
    copy; an error handle raises the file's BadInputError."""
    import torch

    from ..defense.pipeline import ReadFile

    kind = handle[0]
    if kind == "error":
        raise BadInputError(handle[1], handle[2])
    if kind == "file":
        pixels, labels = np.load(handle[1], mmap_mode="c"), np.load(handle[2])
    else:
        import ray

        pixels, labels = ray.get(handle[1]), ray.get(handle[2])
    with warnings.catch_warnings():  # Ray's arrays are read-only views of the object store; the sweep never writes them
        warnings.simplefilter("ignore", UserWarning)
        return ReadFile(path, torch.from_numpy(pixels), torch.from_numpy(labels))
