"""Lab data: .h5 sets (`data` (N,3,55,47), `label` (N,)) streamed in chunks (face images: `images`).

A set for a model of another input shape (C, H, W) (`input_shape`) may hold its `data` channels first
(N, C, H, W), channels last (N, H, W, C) or, for one channel, (N, H, W) or (N, H*W): `pixel_layout` tells which,
and the chunks come out (N, C, H, W) (a channels-last file as a permuted view: no copy).
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import torch

from ..errors import BadInputError, first_line
from ..nets.badnet import INPUT_SHAPE
from .files import atomic_path, check_is_file

DEFAULT_CHUNK = 1024


class _Set:
    """What LabDataset and ArraySet share: a length and use as a context manager (closing on exit)."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamedSet(_Set):
    """A validated set read in float32 chunks from its rows (an .h5 dataset, a mapped .npy, an .npz array):
    what LabDataset and the other file layouts (`data.formats`) share. A subclass sets `path`, `input_shape`,
    `guard`, `labels`, `layout`, `dtype`, `read_seconds` and gives `_rows` (a context manager whose value reads
    images [start, stop) as float32 in the file's layout)."""

    dtype: np.dtype

    def chunks(self, chunk_size: int = DEFAULT_CHUNK, read_ahead: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (pixels float32 (n,3,55,47), labels int64 (n,)) in file order; rejects non-finite pixels.

        Before yielding the last chunk, a file whose pixels all lie within [0, 1] is refused (tracked on the
        chunks as they are read). `read_ahead`: a background thread reads (and converts) the next chunk while the
        caller works on this one (h5py, numpy's cast and torch's checks release the GIL); same chunks, same
        errors, same order.
        """
        chunks = self._read_chunks(chunk_size)
        return read_ahead_of(chunks) if read_ahead else chunks

    def _rows(self, chunk_size: int):
        raise NotImplementedError

    def _read_chunks(self, chunk_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        floating = np.issubdtype(self.dtype, np.floating)
        seen = PixelRange()
        with self._rows(chunk_size) as read:
            for start in range(0, len(self), chunk_size):
                stop = min(start + chunk_size, len(self))
                began = time.perf_counter()
                with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected below
                    pixels = arrange(read(start, stop), self.layout, self.input_shape)
                if floating:
                    check_finite(pixels, self.path, start)
                seen.update(pixels)
                if stop == len(self) and self.guard:
                    seen.check(self.path)
                self.read_seconds += time.perf_counter() - began
                yield pixels, torch.from_numpy(self.labels[start:stop])


class LabDataset(StreamedSet):
    """One lab .h5 file, validated on open and read lazily in float32 chunks.

    Only the labels are held in memory; pixels are converted chunk by chunk by HDF5 itself, so a 700 MB
    float64 file is never materialised as a whole.
    """

    def __init__(self, path: str | os.PathLike[str], num_classes: int | None = None,
                 input_shape: tuple[int, int, int] | None = INPUT_SHAPE, guard: bool = True) -> None:
        """`input_shape`: the model's (C, H, W) (None: a user's module of unknown input, data taken as it is);
        `guard`: refuse a file whose pixels all lie in [0, 1] (the lab nets' guard; a user's own module
        preprocesses its data itself)."""
        self.path = check_is_file(path)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.guard = guard
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise BadInputError(self.path, f"not a readable HDF5 file ({first_line(exc)})") from None
        self.read_seconds = 0.0  # wall time spent reading and converting chunks (for --verbose)
        try:
            self._data, self.labels = self._validate(num_classes)
        except BaseException:
            self._file.close()
            raise
        self.dtype = self._data.dtype

    def _validate(self, num_classes: int | None) -> tuple[h5py.Dataset, np.ndarray]:
        f, where = self._file, self.path
        for key in ("data", "label"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                shape = "(N, " + ", ".join(map(str, self.input_shape)) + ")" if self.input_shape else "(N, C, H, W)"
                raise BadInputError(where, f"missing dataset '{key}' (a lab file has 'data' {shape} and 'label' (N,))")
        data, label = f["data"], f["label"]
        self.layout = check_arrays(data.shape, data.dtype, label.shape, self.input_shape, where, ("'data'", "'label'"))
        return data, check_labels(label[()], num_classes, where)

    @property
    def shape(self) -> tuple[int, ...]:
        """The 'data' dataset's shape, in the file's layout."""
        return tuple(self._data.shape)

    def _rows(self, chunk_size: int):
        return MappedRows.open(self.path, self._data) or CopiedRows(self._data, chunk_size)

    def close(self) -> None:
        self._file.close()


def check_arrays(shape: tuple[int, ...], dtype: np.dtype, label_shape: tuple[int, ...],
                 input_shape: tuple[int, ...] | None, where: str | os.PathLike[str],
                 names: tuple[str, str] = ("'data'", "'label'")) -> str:
    """The checks every file layout makes on its pixel and label arrays before reading them (shape against the
    model's input, dtype, matching lengths, not empty); returns the pixel layout (see `pixel_layout`)."""
    what, label = names
    layout = pixel_layout(tuple(shape), input_shape, where, what) if input_shape else "nchw"
    if not (np.issubdtype(dtype, np.floating) or dtype == np.uint8):
        raise BadInputError(where, f"{what} has dtype {dtype}, expected a float type or uint8")
    if len(label_shape) != 1:
        raise BadInputError(where, f"{label} has shape {tuple(label_shape)}, expected (N,)")
    if label_shape[0] != shape[0]:
        raise BadInputError(where, f"{what} holds {shape[0]} images but {label} holds {label_shape[0]} labels")
    if shape[0] == 0:
        raise BadInputError(where, "the set is empty (0 images)")
    if not input_shape and len(shape) < 2:
        raise BadInputError(where, f"{what} has shape {tuple(shape)}, expected a batch (N, ...)")
    return layout


class CopiedRows:
    """Images [start, stop) of a 'data' dataset as float32 pixels, read by HDF5 into a reused buffer (any layout)."""

    def __init__(self, data: h5py.Dataset, chunk_size: int) -> None:
        self.data = data
        self.raw = np.empty((min(chunk_size, data.shape[0]), *data.shape[1:]), dtype=data.dtype)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        self.data.read_direct(self.raw, np.s_[start:stop], np.s_[0 : stop - start])
        return torch.from_numpy(self.raw[: stop - start].astype(np.float32))  # a fresh array per chunk

    def __enter__(self) -> CopiedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class MappedRows:
    """Images [start, stop) of a contiguous, unfiltered 'data' dataset as float32 pixels, converted straight
    from the file's pages (a private, read-only-in-practice memory map of just those rows).

    No copy into a buffer first: for the lab's float64 files this reads in about half the time of
    `CopiedRows`, with the same values. numpy converts: as fast as torch here (the work is bound by memory),
    and its fresh arrays keep eval's peak resident memory at CopiedRows' level, where torch's added 100-300 MB.
    Only the rows being converted are mapped, so the resident memory stays one chunk. Made only by `open`,
    where HDF5 reports the data's offset, the file holds all its bytes, and the first and last images read back
    equal to HDF5's own read.
    """

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int, shared: bool = False) -> None:
        """Rows of `shape` and `dtype` from byte `offset` of `path`. `shared`: map them read-only and prefaulted
        in one go where the OS can (MAP_POPULATE), for a file nobody writes (`shared_file`'s float32 copy)."""
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.offset, self.shared = offset, shared
        self.row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.fh = open(path, "rb")

    @classmethod
    def open(cls, path: Path, data: h5py.Dataset) -> MappedRows | None:
        """A reader of `data` where it can be mapped (contiguous, no filters, external files or foreign byte
        order, and its bytes where HDF5 says, checked on its first and last image), else None."""
        if data.chunks is not None or data.external or not data.dtype.isnative or data.dtype.hasobject:
            return None
        offset = data.id.get_offset()
        if offset is None or offset + data.nbytes > path.stat().st_size:
            return None
        rows = cls(path, data.dtype, data.shape[1:], int(offset))
        if all(rows.raw(i, i + 1).tobytes() == data[i : i + 1].tobytes() for i in {0, data.shape[0] - 1}):
            return rows
        rows.fh.close()
        return None

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Images [start, stop) in the file's dtype, as a view of a fresh mapping of just their pages (private, or
        read-only with `shared`): it goes away with the last view."""
        first, end = self.offset + start * self.row_bytes, self.offset + stop * self.row_bytes
        if os.fstat(self.fh.fileno()).st_size < end:  # touching mapped bytes past the end would kill the process
            raise BadInputError(self.path, "the file became shorter while it was being read")
        base = first - first % mmap.ALLOCATIONGRANULARITY
        if self.shared:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapped = mmap.mmap(self.fh.fileno(), end - base, flags=flags, prot=mmap.PROT_READ, offset=base)
        else:
            mapped = mmap.mmap(self.fh.fileno(), end - base, access=mmap.ACCESS_COPY, offset=base)
        return np.frombuffer(mapped, self.dtype, (stop - start) * int(np.prod(self.shape)), first - base).reshape(-1, *self.shape)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(self.raw(start, stop).astype(np.float32))  # the mapping goes with the view

    def __enter__(self) -> MappedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def pixel_layout(shape: tuple[int, ...], input_shape: tuple[int, ...], where: str | os.PathLike[str],
                 what: str = "'data'") -> str:
    """How images of `shape` (N first) fit a model's (C, H, W): 'nchw', 'nhwc', 'hw' or 'flat' (one channel:
    (N, H, W) or (N, H*W)). A shape that fits none, or fits both channels first and last (C == H == W), is a
    one-line BadInputError naming it."""
    c, h, w = input_shape
    rest = shape[1:]
    fits = [layout for layout, form in (("nchw", (c, h, w)), ("nhwc", (h, w, c)), ("hw", (h, w)), ("flat", (h * w,)))
            if rest == form and (c == 1 or layout in ("nchw", "nhwc"))]
    if len(fits) == 1 or fits == ["nchw", "nhwc"] and c == 1 and h == w == 1:
        return fits[0]
    if len(fits) > 1:
        raise BadInputError(where, f"{what} has shape {shape}, which fits the model's input {input_shape} both channels "
                                   "first and channels last: its layout is ambiguous")
    accepted = f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c})" + (f" or (N, {h}, {w}) or (N, {h * w})" if c == 1 else "")
    raise BadInputError(where, f"{what} has shape {shape}, which fits no input of the model: expected {accepted}")


def arrange(pixels: torch.Tensor, layout: str, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Images in `layout` (see pixel_layout) as (N, C, H, W): a view (channels last: a permuted one)."""
    if layout == "nhwc":
        return pixels.permute(0, 3, 1, 2)
    if layout in ("hw", "flat"):
        return pixels.reshape(pixels.shape[0], *input_shape)
    return pixels


def check_labels(raw: np.ndarray, num_classes: int | None, where: str | os.PathLike[str],
                 what: str = "'label'") -> np.ndarray:
    """Labels as int64 (N,): whole numbers in [0, num_classes), else a BadInputError naming `where` (and the
    labels as `what`)."""
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise BadInputError(where, f"{what} has dtype {raw.dtype}, expected numbers")
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise BadInputError(where, f"{what} holds non-integer values")
    labels = raw.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, classes)"
        bad = low if low < 0 else high
        raise BadInputError(where, f"label {bad} is outside {bound}")
    return labels


class ArraySet(_Set):
    """An in-memory lab set (pixels (N, 3, 55, 47) 0..255, labels (N,)) with LabDataset's interface.

    `name` stands where a file path would in errors and reports, e.g. "<clean_valid>".
    """

    def __init__(self, pixels: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, name: str,
                 num_classes: int | None = None, input_shape: tuple[int, int, int] | None = INPUT_SHAPE,
                 guard: bool = True) -> None:
        """`input_shape` and `guard` as in LabDataset (None: any batch of at least 2 dimensions, as given)."""
        self.path = name
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.given_dtype = getattr(pixels, "dtype", None)  # held as float32; a generic sweep says when that differs
        pixels = _float_pixels(pixels, name)
        if self.input_shape is None and pixels.ndim < 2:
            raise BadInputError(name, f"pixels have shape {tuple(pixels.shape)}, expected a batch (N, ...)")
        self.layout = pixel_layout(tuple(pixels.shape), self.input_shape, name, "pixels") if self.input_shape else "nchw"
        self.pixels = arrange(pixels, self.layout, self.input_shape)
        if self.pixels.shape[0] == 0:
            raise BadInputError(name, "the set is empty (0 images)")
        check_finite(self.pixels, name)
        if guard:
            seen = PixelRange()
            seen.update(self.pixels)
            seen.check(name)
        raw = _label_array(labels)
        if raw.shape != (self.pixels.shape[0],):
            raise BadInputError(name, f"labels have shape {raw.shape}, expected ({self.pixels.shape[0]},)")
        self.labels = check_labels(raw, num_classes, name)

    @property
    def shape(self) -> tuple[int, ...]:
        """The pixels' shape, (N, C, H, W) for a model of known input."""
        return tuple(self.pixels.shape)

    def chunks(self, chunk_size: int = DEFAULT_CHUNK, read_ahead: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixels float32, labels int64) in order, `chunk_size` images at a time (`read_ahead`: nothing to read)."""
        for start in range(0, len(self), chunk_size):
            yield self.pixels[start : start + chunk_size], torch.from_numpy(self.labels[start : start + chunk_size])


def arrays_sha256(pixels: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> str:
    """sha256 of in-memory data as ArraySet holds it (float32 pixels, int64 labels), for the report."""
    import hashlib

    digest = hashlib.sha256(_float_pixels(pixels).contiguous().numpy().tobytes())
    digest.update(_label_array(labels).astype(np.int64).tobytes())
    return digest.hexdigest()


def _float_pixels(pixels: torch.Tensor | np.ndarray, where: str = "in-memory pixels") -> torch.Tensor:
    """In-memory pixels as a float32 CPU tensor (their values; real numbers only)."""
    pixels = pixels if isinstance(pixels, torch.Tensor) else torch.as_tensor(np.asarray(pixels))
    check_real(pixels, where, "pixels")
    return pixels.detach().cpu().float()


def check_real(values: torch.Tensor, where: str | os.PathLike[str], what: str) -> None:
    """A BadInputError unless `values` are real numbers (float, integer or bool): a complex tensor would lose its
    imaginary part in the cast to the model's dtype."""
    if values.is_complex():
        raise BadInputError(where, f"{what} have dtype {str(values.dtype).removeprefix('torch.')}, expected real numbers "
                                   "(a float or integer type, or bool)")


def _label_array(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def read_all(dataset: LabDataset | ArraySet) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole set as float32 pixels and int64 labels (for the clean validation set, which trains fine-tuning)."""
    chunks = list(dataset.chunks())
    return torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])


def load_lab_set(path: str | os.PathLike[str], num_classes: int | None = None,
                 input_shape: tuple[int, int, int] = INPUT_SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole lab .h5 file, validated, as (pixels (N, 3, 55, 47) float32 0..255, labels (N,) int64); for a model
    of another `input_shape` (C, H, W), pixels (N, C, H, W) from any layout `pixel_layout` accepts.

    Reads in chunks (a 700 MB float64 file needs about 350 MB as float32); `prune_sweep` streams files instead.

    >>> x, y = tb.load_lab_set("cl/test.h5")
    >>> (bd(x[:100]).argmax(1) == y[:100]).float().mean()
    """
    with LabDataset(path, num_classes, input_shape) as dataset:
        return read_all(dataset)


def read_ahead_pays(device: torch.device) -> bool:
    """Whether reading the next chunk in a background thread (`chunks(read_ahead=True)`) speeds up a pass of the
    network on `device`: yes on a GPU, or when torch's threads leave a CPU core free; no when they use every core,
    because the reader then stalls them (on 2 cores the four lab files went 0.3-0.6 s slower read ahead)."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


Item = TypeVar("Item")
_DONE = object()


def read_ahead_of(items: Iterator[Item], depth: int = 1) -> Iterator[Item]:
    """Iterate `items` in a background thread, at most `depth` items ahead; exceptions reach the caller in order.

    Closing the returned generator early (or an error in the caller) stops and joins the thread, so the
    source (e.g. an open HDF5 file) is idle again when the caller closes it.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the caller, raised there
            put((None, exc))

    worker = threading.Thread(target=produce, name="torch-badnet-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


class PixelRange:
    """Min and max of the pixels read so far, until one exceeds 1 (then the file is on the 0..255 scale)."""

    def __init__(self) -> None:
        self.low, self.high = float("inf"), float("-inf")

    def update(self, pixels: torch.Tensor) -> None:
        if self.high > 1:
            return  # decided: nothing more to track
        low, high = torch.aminmax(pixels)
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))

    def check(self, path: str | os.PathLike[str]) -> None:
        """A whole file within [0, 1] is scaled for another model: refuse it rather than score noise."""
        if self.high <= 1:
            raise BadInputError(path, f"every pixel lies in [{self.low:g}, {self.high:g}], but lab files hold 0..255: "
                                      "multiply the data by 255 (a model that wants 0..1 pixels takes 0..255 files "
                                      "with --rescale)")


def check_finite(pixels: torch.Tensor, where: str | os.PathLike[str], first_index: int = 0) -> None:
    """A BadInputError naming the first image (counted from `first_index`) that holds a NaN or inf pixel."""
    if not _all_finite(pixels):
        bad = first_index + int((~torch.isfinite(pixels)).flatten(1).any(1).nonzero()[0])
        raise BadInputError(where, f"image {bad} holds non-finite pixels (NaN or inf)")


def _all_finite(pixels: torch.Tensor) -> bool:
    """No NaN or inf: one sum answers for the whole chunk; an inf sum of finite values (overflow) is checked in full."""
    return bool(torch.isfinite(pixels.sum())) or bool(torch.isfinite(pixels).all())


def write_lab_h5(path: str | os.PathLike[str], data: np.ndarray, labels: np.ndarray) -> None:
    """Write a lab-layout .h5 file atomically (fixed metadata, so equal inputs give equal bytes)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=labels)
