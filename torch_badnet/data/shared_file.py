"""A lab file read once and shared: its pixels converted to float32 once, read by many sweeps without a copy.

`batch` reads every input file once per machine (`share_file`): the pixels go, in the file's own layout, into
a float32 `.npy` file that every worker maps (locally) or into an array in Ray's object store, and the labels
and what the reading found (non-finite pixels, the pixel range) into a small `ReadFile` record. Each sweep
then opens it as a `SharedSet`: the checks that depend on the model (layout, classes, the 0..255 guard) run
in the same order as `lab_sets.LabDataset`'s, with the same messages, and the pixels come out a chunk at a time
from a fresh read-only mapping of just those rows, so a worker holds one chunk of pixels, never the file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import BadInputError
from .lab_sets import DEFAULT_CHUNK, LabDataset, MappedRows, PixelRange, _Set, arrange, check_labels, pixel_layout


@dataclass(frozen=True)
class ReadFile:
    """A lab file read once by `share_file`: what a sweep needs to open it again without reading the file."""

    path: str  # the lab file, named in reports and errors
    pixels: str | np.ndarray  # a float32 .npy file (mapped a chunk at a time), or the array itself (Ray)
    labels: np.ndarray  # the file's labels, as read (checked against the model's classes on open)
    shape: tuple[int, ...]  # the 'data' dataset's shape
    pixel_range: PixelRange = field(default_factory=PixelRange)  # min and max (until one exceeds 1)
    bad_pixels: str | None = None  # the message of the first non-finite image, if any


def share_file(path: str | os.PathLike[str], pixels_npy: Path | None) -> ReadFile:
    """Read a lab file once, checking what does not depend on the model (LabDataset's checks and messages);
    the float32 pixels go to `pixels_npy` (None: kept in memory, for Ray's object store). Raises BadInputError."""
    with LabDataset(path, None, input_shape=None, guard=False) as ds:
        shape = ds.shape
        pixels = (np.empty(shape, np.float32) if pixels_npy is None
                  else np.lib.format.open_memmap(pixels_npy, mode="w+", dtype=np.float32, shape=shape))
        seen, bad, start = PixelRange(), None, 0
        try:
            for x, _ in ds.chunks(DEFAULT_CHUNK, read_ahead=True):
                pixels[start : start + x.shape[0]] = x.numpy()
                seen.update(x)
                start += x.shape[0]
        except BadInputError as exc:  # non-finite pixels: an error for every model, raised where a sweep would
            bad = exc.problem
        labels = ds.labels
    stored: str | np.ndarray = pixels
    if pixels_npy is not None:
        del pixels  # unmapped; the workers map the file
        stored = str(pixels_npy)
    return ReadFile(str(ds.path), stored, labels, shape, seen, bad)


class SharedSet(_Set):
    """A `ReadFile` opened for one model: LabDataset's checks in its order, then float32 chunks without a copy."""

    def __init__(self, read: ReadFile, num_classes: int | None, input_shape: tuple[int, int, int] | None,
                 guard: bool = True) -> None:
        self.path, self.read = read.path, read
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.layout = pixel_layout(read.shape, self.input_shape, self.path, "'data'") if self.input_shape else "nchw"
        self.labels = check_labels(read.labels, num_classes, self.path)
        self.guard = guard
        self.read_seconds = 0.0

    def chunks(self, chunk_size: int = DEFAULT_CHUNK, read_ahead: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixels float32 (n, C, H, W), labels int64 (n,)) in order, as LabDataset.chunks yields them (its errors
        at the same points: non-finite pixels on the first chunk, the guard's before the last); nothing to read
        ahead."""
        if self.read.bad_pixels is not None:
            raise BadInputError(self.path, self.read.bad_pixels)
        with _rows_of(self.read.pixels) as rows:
            for start in range(0, len(self), chunk_size):
                stop = min(start + chunk_size, len(self))
                if stop == len(self) and self.guard:
                    self.read.pixel_range.check(self.path)
                pixels = arrange(_tensor(rows.raw(start, stop)), self.layout, self.input_shape)
                yield pixels, torch.from_numpy(self.labels[start:stop])


def _rows_of(pixels: str | np.ndarray) -> contextlib.AbstractContextManager:
    """A context manager giving `rows` with rows.raw(start, stop): images [start, stop) viewing the shared pixels,
    never a copy (the .npy file through `MappedRows`' read-only mappings of just those rows)."""
    if isinstance(pixels, np.ndarray):
        return contextlib.nullcontext(SimpleNamespace(raw=lambda start, stop: pixels[start:stop]))  # Ray's store: views
    header = np.load(pixels, mmap_mode="r")  # only the header is read: the data's offset and shape
    if header.dtype != np.float32 or not header.flags.c_contiguous:
        raise ValueError(f"{pixels}: not a C-order float32 .npy file")
    return MappedRows(Path(pixels), header.dtype, header.shape[1:], int(header.offset), shared=True)


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only views of shared pixels; a sweep never writes its input
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
