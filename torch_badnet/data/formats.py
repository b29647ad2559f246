"""The data layouts every data flag takes, detected from the value: a lab .h5 file, an .npz file (keys x/y or
data/label), a pair of .npy files (`IMAGES.npy,LABELS.npy`) and an image folder (`DIR/<class>/<image>`, classes
in torchvision's order or named by --classes). Each opens as a `lab_sets.StreamedSet` with the .h5 file's checks:
the pixel layout against the model's input (`pixel_layout`), dtypes, lengths, labels, non-finite pixels, the
0..255 guard; every problem is one BadInputError naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, first_line
from .files import check_is_file
from .lab_sets import LabDataset, StreamedSet, check_arrays, check_labels
from .set_names import data_files, npy_pair

__all__ = ["data_files", "npy_pair", "open_data_file", "data_sha256", "parse_classes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
NPZ_KEYS = (("x", "y"), ("data", "label"))  # (pixels, labels) key pairs of an .npz file
HDF5_MAGIC, ZIP_MAGIC, NPY_MAGIC = b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"\x93NUMPY"


def layout_of(value: str | os.PathLike[str]) -> str:
    """'npy-pair', 'folder', 'npz', 'npy' (one .npy file: refused on open) or 'h5' (any other file: HDF5 decides)."""
    if npy_pair(value) is not None:
        return "npy-pair"
    path = Path(value)
    if path.is_dir():
        return "folder"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "h5"  # LabDataset names what is wrong with the path
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if head.startswith(NPY_MAGIC):
        return "npy"
    return "h5"


def open_data_file(value: str | os.PathLike[str], num_classes: int | None = None,
                   input_shape: tuple[int, int, int] | None = None, guard: bool = True,
                   classes: Sequence[str] | None = None) -> StreamedSet:
    """A validated set from a data flag's value, in whichever layout it is (see the module); `classes`: the
    label order of an image folder's class folders (None: torchvision's)."""
    layout = layout_of(value)
    if layout == "npy-pair":
        images, labels = npy_pair(value)  # type: ignore[misc]
        return NpyPairSet(images, labels, num_classes, input_shape, guard)
    if layout == "folder":
        return ImageFolderSet(Path(value), num_classes, input_shape, guard, classes)
    if layout == "npz":
        return NpzSet(Path(value), num_classes, input_shape, guard)
    if layout == "npy":
        raise BadInputError(value, "a single .npy file holds no labels: give the images and the labels as "
                                   "IMAGES.npy,LABELS.npy")
    return LabDataset(value, num_classes, input_shape, guard)


def data_sha256(value: str | os.PathLike[str]) -> str:
    """summary.json's sha256 of a data flag's value: the file's; for an .npy pair, the sha256 of the two files'
    digests joined by a comma; for an image folder, the sha256 of its listing, one line `CLASS/FILE<tab>sha256`
    per image in reading order."""
    from .files import file_sha256

    pair = npy_pair(value)
    if pair is not None:
        return hashlib.sha256(",".join(file_sha256(p) for p in pair).encode()).hexdigest()
    if Path(value).is_dir():
        folder = Path(value)
        lines = "".join(f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}\n" for p, _ in image_files(folder, None))
        return hashlib.sha256(lines.encode()).hexdigest()
    return file_sha256(value)


def parse_classes(value: str | None) -> tuple[str, ...] | None:
    """--classes: class folder names in label order, comma-separated or one per line in a text file."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [name.strip() for name in value.split(",")]
    if not names or not all(names):
        raise BadInputError("--classes", "give class folder names in label order, comma-separated or one per line in a file")
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise BadInputError("--classes", f"class '{twice}' is named twice")
    return tuple(names)


class _ArrayFileSet(StreamedSet):
    """Pixels and labels from numpy arrays of a file (a mapped .npy, or an .npz member read whole)."""

    def _setup(self, pixels: np.ndarray, raw_labels: np.ndarray, num_classes: int | None,
               input_shape: tuple[int, int, int] | None, guard: bool, where: tuple[Path, Path], names: tuple[str, str]) -> None:
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.guard = guard
        self.read_seconds = 0.0
        self.layout = check_arrays(pixels.shape, pixels.dtype, raw_labels.shape, self.input_shape, where[0], names)
        self.labels = check_labels(np.asarray(raw_labels), num_classes, where[1], names[1])
        self.pixels, self.dtype = pixels, pixels.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    def _rows(self, chunk_size: int):
        # a fresh float32 array per chunk (never a view of a mapped, read-only file)
        return contextlib.nullcontext(lambda start, stop: torch.from_numpy(np.array(self.pixels[start:stop], np.float32)))


class NpzSet(_ArrayFileSet):
    """An .npz file holding x/y or data/label (read whole: numpy cannot map a zip member)."""

    def __init__(self, path: Path, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                 guard: bool = True) -> None:
        self.path = check_is_file(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                pairs = [pair for pair in NPZ_KEYS if set(pair) <= keys]
                if len(pairs) != 1:
                    found = ", ".join(sorted(keys)) or "none"
                    problem = ("holds both x/y and data/label: which pair is the set is ambiguous" if pairs else
                               f"missing keys: an .npz set holds x and y, or data and label (keys found: {found})")
                    raise BadInputError(path, problem)
                (x_key, y_key), = pairs
                pixels, labels = npz[x_key], npz[y_key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise BadInputError(path, f"not a readable .npz file ({first_line(exc)})") from None
        self._setup(pixels, labels, num_classes, input_shape, guard, (self.path, self.path), (f"'{x_key}'", f"'{y_key}'"))


class NpyPairSet(_ArrayFileSet):
    """IMAGES.npy (mapped, read a chunk at a time) and LABELS.npy; errors name the file at fault."""

    def __init__(self, images: Path, labels: Path, num_classes: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, guard: bool = True) -> None:
        self.path = Path(f"{images},{labels}")
        pixels = _load_npy(images, mmap=True)
        raw = _load_npy(labels, mmap=False)
        self._setup(pixels, raw, num_classes, input_shape, guard, (images, labels), ("the images", "the labels"))


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    check_is_file(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(path, f"not a readable .npy file ({first_line(exc)})") from None


def class_folders(folder: Path) -> list[str]:
    """The class folders, sorted as torchvision's ImageFolder sorts them (by name, as text)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def image_files(folder: Path, classes: Sequence[str] | None) -> list[tuple[Path, int]]:
    """(image file, label) in torchvision's ImageFolder order: class by class (label order), each class folder
    walked in sorted order (subfolders too), its files sorted, by extension (IMAGE_EXTENSIONS, any case)."""
    names = class_folders(folder)
    order = list(classes) if classes is not None else names
    files = []
    for label, name in enumerate(order):
        if name not in names:
            continue
        for root, _dirs, fnames in sorted(os.walk(folder / name, followlinks=True)):
            files += [(Path(root) / f, label) for f in sorted(fnames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def check_class_folders(folder: Path, classes: Sequence[str] | None) -> None:
    """No class folders, one --classes does not name, or numbered folders whose text order is not their numeric
    order (folder '10' would get label 2): one line naming the folder."""
    names = class_folders(folder)
    if not names:
        raise BadInputError(folder, "holds no class folders (an image folder is DIR/<class>/<image>.png)")
    if classes is not None:
        stray = next((n for n in names if n not in classes), None)
        if stray is not None:
            raise BadInputError(folder, f"holds class folder '{stray}', which --classes does not name")
        return
    if all(n.isdigit() for n in names) and sorted(names, key=int) != names:
        first = next(n for n, m in zip(names, sorted(names, key=int)) if n != m)
        raise BadInputError(folder, f"its class folders are numbers, and sorted as text (torchvision's order) folder "
                                    f"'{first}' gets label {names.index(first)}: name the label order with --classes")


class ImageFolderSet(StreamedSet):
    """DIR/<class>/<image> (PNG, JPEG, ...), read a chunk of images at a time (`images.load_image`: each file's
    mode must be the model's, its size the model's input; a model of unknown input takes the first image's)."""

    def __init__(self, folder: Path, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                 guard: bool = True, classes: Sequence[str] | None = None) -> None:
        self.path, self.guard, self.read_seconds = Path(folder), guard, 0.0
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        check_class_folders(self.path, classes)
        listed = image_files(self.path, classes)
        if not listed:
            raise BadInputError(folder, f"holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        self.files = [p for p, _ in listed]
        bound = len(classes) if classes is not None else len(class_folders(self.path))
        self.labels = check_labels(np.array([label for _, label in listed], np.int64),
                                   num_classes if num_classes is not None else bound, folder)
        self.channels, self.size = self._image_form()
        self.layout, self.dtype = "nchw", np.dtype(np.uint8)  # whole pixels 0..255: nothing non-finite to look for

    def _image_form(self) -> tuple[int, tuple[int, int]]:
        """(channels, (H, W)): the model's, else the first image's own."""
        if self.input_shape is not None:
            return self.input_shape[0], tuple(self.input_shape[1:])  # type: ignore[return-value]
        from PIL import Image

        from .images import GREY_MODES

        try:
            with Image.open(self.files[0]) as img:
                return (1 if img.mode in GREY_MODES else 3), (img.size[1], img.size[0])
        except OSError as exc:
            raise BadInputError(self.files[0], f"not a readable image ({first_line(exc)})") from None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), self.channels, *self.size)

    def _rows(self, chunk_size: int):
        return contextlib.nullcontext(self._read)

    def _read(self, start: int, stop: int) -> torch.Tensor:
        from .images import load_image

        return torch.stack([load_image(p, channels=self.channels, size=self.size, resize_hint="")
                            for p in self.files[start:stop]])

