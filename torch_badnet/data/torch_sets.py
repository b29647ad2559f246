"""PyTorch data as a set: a Dataset yielding (image, label), or an iterable of (images, labels) batches such as a
DataLoader, read once, in order (the user's transforms run as they set them), into one float32 pixel tensor and
int64 labels that `lab_sets.ArraySet` then checks like any in-memory set.

Memory: a Dataset of known length fills one preallocated tensor; batches are kept as read and copied into one
tensor at the end, each freed as it is copied (about one copy of the set, plus one batch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError
from .lab_sets import check_real


def is_torch_data(source: Any) -> bool:
    """A Dataset (map-style: __getitem__ and __len__) or an iterable of samples or batches (not a path, an array,
    nor a (pixels, labels) pair: a tuple of a pixel tensor or array and its labels, as a tensor, array or list)."""
    if isinstance(source, (str, bytes, torch.Tensor, np.ndarray, dict)) or hasattr(source, "__fspath__"):
        return False
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], (torch.Tensor, np.ndarray)):
        return False
    return _map_style(source) or isinstance(source, Iterable)


def _map_style(source: Any) -> bool:
    """Read by index 0..len-1 (a torch Dataset, or any object with __getitem__ and __len__ that is no list)."""
    if isinstance(source, (torch.utils.data.IterableDataset, list, tuple)):
        return False
    return hasattr(source, "__getitem__") and hasattr(source, "__len__")


def read_torch_data(source: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels float32 (N, ...), labels int64 (N,)) of a Dataset or an iterable of batches, read once in order.

    Each item is (image, label) or (images, labels): a label that is a single number makes its item one sample,
    a 1-d label tensor makes it a batch. Images may be tensors, numpy arrays or PIL images. `name` (e.g.
    "<clean_valid>") stands for the data in errors."""
    if _map_style(source):
        return _read_indexed(source, name)
    return _read_batches(iter(source), name)


def _read_indexed(dataset: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset)
    if n == 0:
        raise BadInputError(name, "the set is empty (0 images)")
    pixels: torch.Tensor | None = None
    labels = np.empty(n, np.int64)
    for i in range(n):
        images, y = _batch(dataset[i], i, name)
        if images.shape[0] != 1:
            raise BadInputError(name, f"item {i} holds {images.shape[0]} images; a Dataset yields one (image, label) per item")
        if pixels is None:
            pixels = torch.empty((n, *images.shape[1:]), dtype=torch.float32)
        _check_shape(images, pixels.shape[1:], i, name)
        pixels[i] = images[0]
        labels[i] = y[0]
    assert pixels is not None
    return pixels, torch.from_numpy(labels)


def _read_batches(items: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    held: list[tuple[torch.Tensor, np.ndarray]] = []
    for i, item in enumerate(items):
        images, y = _batch(item, i, name)
        if held:
            _check_shape(images, held[0][0].shape[1:], i, name)
        held.append((images, y))
    total = sum(int(x.shape[0]) for x, _ in held)
    if total == 0:
        raise BadInputError(name, "the set is empty (0 images)")
    pixels = torch.empty((total, *held[0][0].shape[1:]), dtype=torch.float32)
    labels = np.empty(total, np.int64)
    start = 0
    held.reverse()
    while held:  # each batch freed once copied
        x, y = held.pop()
        pixels[start : start + x.shape[0]] = x
        labels[start : start + x.shape[0]] = y
        start += int(x.shape[0])
    return pixels, torch.from_numpy(labels)


def _batch(item: Any, index: int, name: str) -> tuple[torch.Tensor, np.ndarray]:
    """One item as (images float32 (n, ...), labels int64 (n,)): a sample becomes a batch of one."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        size = f" of {len(item)}" if isinstance(item, (tuple, list)) else ""
        pair = "; a (pixels, labels) pair is a tuple, not a list" if isinstance(item, torch.Tensor) else ""
        raise BadInputError(name, f"item {index} is a {type(item).__name__}{size}, expected (image, label) or (images, labels)"
                                  f"{pair}")
    image, label = item
    y = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)) or y.ndim > 1:
        raise BadInputError(name, f"item {index} has label {_short(label)}, expected a class number or a 1-d batch of them")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise BadInputError(name, f"item {index} holds non-integer labels")
    x = _tensor(image, index, name)
    if y.ndim == 0:
        x, y = x.unsqueeze(0), y.reshape(1)
    elif x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise BadInputError(name, f"item {index} holds {x.shape[0] if x.ndim else 0} images but {y.shape[0]} labels")
    return x, y.astype(np.int64)


def _tensor(image: Any, index: int, name: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        check_real(image, name, f"item {index}'s image values")
        return image.detach().cpu().float()
    try:
        array = np.asarray(image)  # numpy arrays and PIL images
    except Exception:  # noqa: BLE001 - anything numpy cannot take is the one-line error below
        array = np.asarray(None)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise BadInputError(name, f"item {index}'s image is a {type(image).__name__}, expected a tensor, array or PIL image")
    return torch.from_numpy(array.astype(np.float32))


def _check_shape(images: torch.Tensor, expected: tuple[int, ...], index: int, name: str) -> None:
    if tuple(images.shape[1:]) != tuple(expected):
        raise BadInputError(name, f"item {index}'s images have shape {tuple(images.shape[1:])}, the first item's "
                                  f"{tuple(expected)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
