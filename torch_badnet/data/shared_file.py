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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import BadInputError
from .formats import open_data_file
from .lab_sets import DEFAULT_CHUNK, MappedRows, PixelRange, _Set, arrange, check_labels, pixel_layout


@dataclass(frozen=True)
class ReadFile:
    """A lab file read once by `share_file`: what a sweep needs to open it again without reading the file."""

    path: str  # the lab file, named in reports and errors
    pixels: str | np.ndarray  # a float32 .npy file (mapped a chunk at a time), or the array itself (Ray)
    labels: np.ndarray  # the file's labels, as read (checked against the model's classes on open)
    shape: tuple[int, ...]  # the 'data' dataset's shape
    pixel_range: PixelRange = field(default_factory=PixelRange)  # min and max (until one exceeds 1)
    bad_pixels: str | None = None  # the message of the first non-finite image, if any


def share_file(path: str | os.PathLike[str], pixels_npy: Path | None, read_ahead: bool = True,
               classes: Sequence[str] | None = None) -> ReadFile:
    """Read a data file once (any layout of `data.formats`; `classes`: an image folder's label order), checking
    what does not depend on the model (LabDataset's checks and messages);
    the float32 pixels go to `pixels_npy` (None: kept in memory, for Ray's object store). `read_ahead`: read
    the next chunk in a background thread. Raises BadInputError."""
    with open_data_file(path, None, input_shape=None, guard=False, classes=classes) as ds, _PixelSink(pixels_npy, ds.shape) as sink:
        seen, bad = PixelRange(), None
        try:
            for x, _ in ds.chunks(DEFAULT_CHUNK, read_ahead=read_ahead):
                sink.write(x.numpy())
                seen.update(x)
        except BadInputError as exc:  # non-finite pixels: an error for every model, raised where a sweep would
            bad = exc.problem
    stored = str(pixels_npy) if pixels_npy is not None else sink.array
    return ReadFile(str(ds.path), stored, ds.labels, ds.shape, seen, bad)


class _PixelSink:
    """Where share_file puts the float32 pixels, in order: an array in memory (`array`), or a C-order `.npy`
    file written through the file (not a mapping, so the written pages stay the page cache's, never counted in the
    writer's memory); the file gets its full size even when reading stopped early (non-finite pixels)."""

    def __init__(self, npy: Path | None, shape: tuple[int, ...]) -> None:
        self.array = np.empty(shape, np.float32) if npy is None else None
        self.file = None if npy is None else open(npy, "wb")
        self.start = 0
        if self.file is not None:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(self.file, header)
            self.end = self.file.tell() + int(np.prod(shape)) * 4

    def write(self, rows: np.ndarray) -> None:
        if self.array is not None:
            self.array[self.start : self.start + rows.shape[0]] = rows
        else:
            assert self.file is not None
            self.file.write(memoryview(np.ascontiguousarray(rows, np.float32)).cast("B"))
        self.start += rows.shape[0]

    def __enter__(self) -> _PixelSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.truncate(self.end)
            self.file.close()


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

    @property
    def shape(self) -> tuple[int, ...]:
        """The file's 'data' shape, in its layout."""
        return tuple(self.read.shape)

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
