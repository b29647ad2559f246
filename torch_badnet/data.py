"""Lab data: .h5 sets (`data` (N,3,55,47), `label` (N,)) streamed in chunks, and single face images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from .errors import BadInputError, first_line
from .files import atomic_path, check_is_file
from .model import INPUT_SHAPE

DEFAULT_CHUNK = 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class LabDataset:
    """One lab .h5 file, validated on open and read lazily in float32 chunks.

    Only the labels are held in memory; pixels are converted chunk by chunk by HDF5 itself, so a 700 MB
    float64 file is never materialised as a whole.
    """

    def __init__(self, path: str | os.PathLike[str], num_classes: int | None = None) -> None:
        self.path = check_is_file(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise BadInputError(self.path, f"not a readable HDF5 file ({first_line(exc)})") from None
        try:
            self._data, self.labels = self._validate(num_classes)
        except BaseException:
            self._file.close()
            raise

    def _validate(self, num_classes: int | None) -> tuple[h5py.Dataset, np.ndarray]:
        f, where = self._file, self.path
        for key in ("data", "label"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise BadInputError(where, f"missing dataset '{key}' (a lab file has 'data' (N,3,55,47) and 'label' (N,))")
        data, label = f["data"], f["label"]
        if data.ndim != 4 or tuple(data.shape[1:]) != INPUT_SHAPE:
            hint = " (channels last? the lab layout is channels first)" if data.shape[-1:] == (3,) else ""
            raise BadInputError(where, f"'data' has shape {tuple(data.shape)}, expected (N, 3, 55, 47){hint}")
        if not (np.issubdtype(data.dtype, np.floating) or data.dtype == np.uint8):
            raise BadInputError(where, f"'data' has dtype {data.dtype}, expected a float type or uint8")
        if label.ndim != 1:
            raise BadInputError(where, f"'label' has shape {tuple(label.shape)}, expected (N,)")
        if label.shape[0] != data.shape[0]:
            raise BadInputError(where, f"'data' holds {data.shape[0]} images but 'label' holds {label.shape[0]} labels")
        if data.shape[0] == 0:
            raise BadInputError(where, "the set is empty (0 images)")
        if not (np.issubdtype(label.dtype, np.floating) or np.issubdtype(label.dtype, np.integer)):
            raise BadInputError(where, f"'label' has dtype {label.dtype}, expected numbers")
        raw = label[()]
        if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            raise BadInputError(where, "'label' holds non-integer values")
        labels = raw.astype(np.int64)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "[0, classes)"
            bad = low if low < 0 else high
            raise BadInputError(where, f"label {bad} is outside {bound}")
        return data, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (pixels float32 (n,3,55,47), labels int64 (n,)) in file order; rejects non-finite pixels,
        and (before yielding the last chunk) a file whose pixels all lie within [0, 1]."""
        data = self._data
        floating = np.issubdtype(data.dtype, np.floating)
        raw = np.empty((min(chunk_size, len(self)), *data.shape[1:]), dtype=data.dtype)  # reused for every chunk
        seen = PixelRange()
        for start in range(0, len(self), chunk_size):
            stop = min(start + chunk_size, len(self))
            data.read_direct(raw, np.s_[start:stop], np.s_[0 : stop - start])
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected below
                pixels = torch.from_numpy(raw[: stop - start].astype(np.float32))  # a fresh array per chunk
            if floating and not _all_finite(pixels):
                bad = start + int((~torch.isfinite(pixels)).flatten(1).any(1).nonzero()[0])
                raise BadInputError(self.path, f"image {bad} holds non-finite pixels (NaN or inf)")
            seen.update(pixels)
            if stop == len(self):
                seen.check(self.path)
            yield pixels, torch.from_numpy(self.labels[start:stop])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LabDataset":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PixelRange:
    """Min and max of the pixels read so far, until one exceeds 1 (then the file is on the 0..255 scale)."""

    def __init__(self) -> None:
        self.low, self.high = float("inf"), float("-inf")

    def update(self, pixels: torch.Tensor) -> None:
        if self.high > 1:
            return  # decided: nothing more to track
        low, high = torch.aminmax(pixels)
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))

    def check(self, path: Path) -> None:
        """A whole file within [0, 1] is scaled for another model: refuse it rather than score noise."""
        if self.high <= 1:
            raise BadInputError(path, f"every pixel lies in [{self.low:g}, {self.high:g}], but lab files hold 0..255: "
                                      "multiply the data by 255 (a model that wants 0..1 pixels takes 0..255 files "
                                      "with --rescale)")


def _all_finite(pixels: torch.Tensor) -> bool:
    """No NaN or inf: one sum answers for the whole chunk; an inf sum of finite values (overflow) is checked in full."""
    return bool(torch.isfinite(pixels.sum())) or bool(torch.isfinite(pixels).all())


def write_lab_h5(path: str | os.PathLike[str], data: np.ndarray, labels: np.ndarray) -> None:
    """Write a lab-layout .h5 file atomically (fixed metadata, so equal inputs give equal bytes)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=labels)


def load_image(path: str | os.PathLike[str], resize: bool = False) -> torch.Tensor:
    """Load one face (PNG/JPEG) as float32 (3, 55, 47) pixels 0..255; other sizes need `resize`."""
    from PIL import Image, UnidentifiedImageError

    path = check_is_file(path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            height, width = INPUT_SHAPE[1:]
            if img.size != (width, height):
                if not resize:
                    raise BadInputError(path, f"image is {img.size[0]}x{img.size[1]} (WxH), expected {width}x{height}; pass --resize to scale it")
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInputError(path, f"not a readable image ({first_line(exc)})") from None
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def load_images(paths: Sequence[str | os.PathLike[str]], resize: bool = False) -> torch.Tensor:
    """Stack faces into one (N, 3, 55, 47) batch in input order."""
    if not paths:
        raise BadInputError("<images>", "no image given")
    return torch.stack([load_image(p, resize) for p in paths])


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
