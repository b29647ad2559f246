"""Poisoned sets made from clean ones: a trigger stamped onto each image, the label set to the attack's target.

A trigger is an image of the data's size (pixels 0..255) and a weight per pixel: the mask (a `--trigger-mask`
image, white = trigger, or the trigger PNG's own transparency) times `alpha`. Stamping blends each image toward
the trigger by that weight, x + w * (t - x): a BadNets patch where the mask is white and alpha is 1 (the trigger's
pixels replace the image's), a blend elsewhere. The target is a class T (images already of class T are left out,
as the lab's poisoned sets leave them out: they cannot show an attack) or `all+1` (label + 1 mod N, all-to-all).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError, first_line
from .files import check_is_file
from .lab_sets import DEFAULT_CHUNK, _Set
from .stamp import blend_into

ALL_TO_ALL = "all+1"


def parse_target(value: str | int) -> int | str:
    """--target: a class number T >= 0, or all+1."""
    text = str(value).strip()
    if text == ALL_TO_ALL:
        return ALL_TO_ALL
    if text.isdigit():
        return int(text)
    raise BadInputError("--target", f"{value!r} is not a class number (0, 1, ...) or {ALL_TO_ALL} (label + 1 mod N)")


@dataclass(frozen=True)
class Trigger:
    """A trigger to stamp: `pixels` (C, H, W) float32 0..255 (C = 1 or 3), `weight` (1, H, W) float32 in [0, 1]
    (mask times alpha), the target, and where it came from (summary.json's record).

    >>> corner = np.zeros((28, 28)); corner[24:, 24:] = 1
    >>> trigger = tb.Trigger.from_arrays(np.full((28, 28), 255.0), corner, target="all+1")
    >>> tb.prune_sweep(model, (x, y), trigger=trigger)        # the poisoned set made from (x, y)
    >>> trigger.stamp(x[:8])                                 # or just the stamped images
    """

    pixels: np.ndarray
    weight: np.ndarray
    target: int | str
    path: str = "<trigger>"
    sha256: str = ""
    mask_path: str | None = None
    mask_sha256: str | None = None
    alpha: float = 1.0
    classes: int | None = None  # the model's classes, once known (`pipeline.bind_classes`)

    @classmethod
    def from_arrays(cls, pixels: Any, mask: Any = None, alpha: float = 1.0, target: int | str = 0,
                    name: str = "<trigger>") -> Trigger:
        """A trigger from arrays: `pixels` (C, H, W) or (H, W) 0..255, `mask` (H, W) in [0, 1] (None: everywhere)."""
        pixels = np.asarray(pixels, np.float32)
        pixels = pixels[None] if pixels.ndim == 2 else pixels
        mask = np.ones(pixels.shape[1:], np.float32) if mask is None else np.asarray(mask, np.float32)
        weight = _weight(mask, alpha, name)
        digest = hashlib.sha256(pixels.tobytes() + weight.tobytes()).hexdigest()
        return cls(pixels, weight, parse_target(target), name, digest, alpha=float(alpha))

    def describe(self) -> str:
        """The report's line on how the poisoned sets were made."""
        mask = f"mask {self.mask_path}, " if self.mask_path else ""
        target = "all-to-all: label + 1 mod N" if self.target == ALL_TO_ALL else f"target {self.target}"
        left_out = "" if self.target == ALL_TO_ALL else f"; images of class {self.target} left out"
        return (f"poisoned sets made from the clean sets with the trigger {self.path} ({mask}alpha {self.alpha:g}, "
                f"{target}{left_out})")

    def record(self) -> dict[str, Any]:
        """summary.json's `trigger`."""
        return {"path": self.path, "sha256": self.sha256, "mask": self.mask_path, "mask_sha256": self.mask_sha256,
                "alpha": self.alpha, "target": self.target}

    def set_sha256(self, source_sha256: str) -> str:
        """An identity for the poisoned set made from a clean set of sha256 `source_sha256`."""
        return hashlib.sha256(json.dumps({"from": source_sha256, **self.record()}, sort_keys=True).encode()).hexdigest()

    def check_classes(self, num_classes: int | None) -> None:
        """A class target must be a class of the model; all+1 needs the model's classes."""
        if isinstance(self.target, int) and num_classes is not None and self.target >= num_classes:
            raise BadInputError("--target", f"class {self.target} is outside the model's classes [0, {num_classes})")
        if self.target == ALL_TO_ALL and num_classes is None:
            raise ValueError("an all-to-all trigger needs the model's number of classes")

    def poison_labels(self, labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(which clean images are kept, their poisoned labels)."""
        num_classes = num_classes if num_classes is not None else self.classes
        self.check_classes(num_classes)
        if self.target == ALL_TO_ALL:
            return np.ones(len(labels), bool), (labels + 1) % num_classes
        keep = labels != self.target
        return keep, np.full(int(keep.sum()), self.target, np.int64)

    def for_images(self, shape: tuple[int, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, weight) for images of `shape` (C, H, W): the trigger's size must be theirs; a grey trigger
        serves colour images, a colour one grey images where its channels are equal."""
        if len(shape) != 3 or tuple(shape[1:]) != self.pixels.shape[1:]:
            h, w = self.pixels.shape[1:]
            raise BadInputError(self.path, f"the trigger is {w}x{h} (WxH), but the images of {where} have shape "
                                           f"{tuple(shape)}: give a trigger of the images' size (the mask places a patch)")
        channels, pixels = shape[0], self.pixels
        if pixels.shape[0] == 1 and channels != 1:
            pixels = np.repeat(pixels, channels, axis=0)
        elif pixels.shape[0] != channels:
            if channels != 1 or not np.all(pixels == pixels[:1]):
                raise BadInputError(self.path, f"a colour trigger, but the images of {where} have {channels} channel(s)")
            pixels = pixels[:1]
        return np.ascontiguousarray(pixels), self.weight

    def stamp(self, images: torch.Tensor, where: str = "<images>") -> torch.Tensor:
        """A float32 copy of `images` (n, C, H, W) with the trigger stamped in."""
        pixels, weight = self.for_images(tuple(images.shape[1:]), where)
        out = images.detach().cpu().to(torch.float32, copy=True).contiguous()
        blend_into(out.numpy(), pixels, weight)
        return out


def _weight(mask: np.ndarray, alpha: float, where: str) -> np.ndarray:
    if not (0 < float(alpha) <= 1):
        raise BadInputError("--trigger-alpha", f"{alpha:g} is outside (0, 1]")
    if mask.ndim != 2 or not np.all((mask >= 0) & (mask <= 1)):
        raise BadInputError(where, "the mask must be one value in [0, 1] per pixel (H, W)")
    if not mask.any():
        raise BadInputError(where, "the mask covers no pixel")
    weight = mask[None].astype(np.float32)
    if float(alpha) != 1:
        weight = weight * np.float32(alpha)
    return weight


def load_trigger(path: str | os.PathLike[str], target: str | int, mask: str | os.PathLike[str] | None = None,
                 alpha: float = 1.0) -> Trigger:
    """--trigger, --target, --trigger-mask and --trigger-alpha as a Trigger. The mask: the mask image (grey
    levels / 255, white = the trigger's pixel), else the trigger PNG's transparency, else (with alpha < 1) every
    pixel; a trigger that would replace every pixel whole is refused.

    >>> trigger = tb.load_trigger("white.png", target=0, mask="corner.png")
    >>> tb.prune_sweep(bd, "cl/valid.h5", clean_test="cl/test.h5", trigger=trigger)
    """
    from .files import file_sha256

    target = parse_target(target)
    if not (0 < float(alpha) <= 1):
        raise BadInputError("--trigger-alpha", f"{alpha:g} is outside (0, 1]")
    pixels, own_alpha = _read_image(path)
    if mask is not None:
        grey, _ = _read_image(mask, grey=True)
        if grey.shape[1:] != pixels.shape[1:]:
            raise BadInputError(mask, f"the mask is {grey.shape[2]}x{grey.shape[1]} (WxH), the trigger "
                                      f"{pixels.shape[2]}x{pixels.shape[1]}: they must be the same size")
        weights, where = grey[0] / np.float32(255), str(mask)
    elif own_alpha is not None:
        weights, where = own_alpha, str(path)
    elif float(alpha) < 1:
        weights, where = np.ones(pixels.shape[1:], np.float32), str(path)
    else:
        raise BadInputError(path, "has no transparent pixels and no --trigger-mask was given, so it would replace "
                                  "every pixel: give --trigger-mask (white = trigger), a PNG whose transparent pixels "
                                  "are left as they are, or --trigger-alpha below 1 for a blend")
    weight = _weight(weights, alpha, where)
    return Trigger(pixels, weight, target, str(path), file_sha256(path), None if mask is None else str(mask),
                   None if mask is None else file_sha256(mask), float(alpha))


def _read_image(path: str | os.PathLike[str], grey: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (C, H, W) float32 0..255: 1 channel for a grey image or `grey`, else 3; its alpha / 255 or None)."""
    from PIL import Image, UnidentifiedImageError

    from .images import GREY_MODES

    path = check_is_file(path)
    try:
        with Image.open(path) as img:
            has_alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
            one = grey or img.mode in GREY_MODES
            if img.mode.startswith("I") or img.mode == "F":
                raise BadInputError(path, f"image mode {img.mode} is not supported (save it as 8-bit RGB or greyscale)")
            rgba = np.asarray(img.convert("LA" if one else "RGBA"), np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInputError(path, f"not a readable image ({first_line(exc)})") from None
    pixels = np.ascontiguousarray(rgba[..., :-1].transpose(2, 0, 1))
    alpha = rgba[..., -1] / np.float32(255) if has_alpha and not grey else None
    return pixels, alpha


class StampedSet(_Set):
    """The poisoned set made from an opened clean set: its images (those not of the target class) with the trigger
    stamped, labelled with the target, in the clean set's order and in chunks of the size asked for."""

    def __init__(self, clean: _Set, trigger: Trigger, num_classes: int | None, name: str) -> None:
        self.clean, self.trigger, self.path = clean, trigger, name
        self.input_shape = getattr(clean, "input_shape", None)
        shape = image_shape(clean)
        self._pixels, self._weight = trigger.for_images(shape, str(clean.path))
        self.keep, self.labels = trigger.poison_labels(clean.labels, num_classes)
        if not len(self.labels):
            raise BadInputError(clean.path, f"every image is of the target class {trigger.target}: none is left to poison")

    @property
    def read_seconds(self) -> float:
        return getattr(self.clean, "read_seconds", 0.0)

    def chunks(self, chunk_size: int = DEFAULT_CHUNK, read_ahead: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(stamped pixels float32, target labels int64), `chunk_size` images at a time (the last may be fewer)."""
        return _rechunk(self._stamped(chunk_size, read_ahead), chunk_size)

    def _stamped(self, chunk_size: int, read_ahead: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = kept = 0
        for x, _ in self.clean.chunks(chunk_size, read_ahead=read_ahead):
            rows = self.keep[start : start + x.shape[0]]
            start += x.shape[0]
            picked = x if rows.all() else x[torch.from_numpy(rows)]
            out = picked.to(torch.float32, copy=True).contiguous()
            blend_into(out.numpy(), self._pixels, self._weight)
            yield out, torch.from_numpy(self.labels[kept : kept + out.shape[0]])
            kept += out.shape[0]

    def close(self) -> None:
        self.clean.close()


def image_shape(dataset: _Set) -> tuple[int, ...]:
    """The (C, H, W) of a set's images as its chunks give them."""
    shape = getattr(dataset, "input_shape", None)
    return tuple(shape) if shape is not None else tuple(dataset.shape[1:])


def _rechunk(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same rows in chunks of exactly `size` (the last may be fewer), as a file of these images is read."""
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    count = 0
    for x, y in chunks:
        if x.shape[0] == 0:
            continue
        held.append((x, y))
        count += x.shape[0]
        while count >= size:
            x_all, y_all = _cat(held)
            yield x_all[:size], y_all[:size]
            held, count = [(x_all[size:], y_all[size:])], count - size
            if count == 0:
                held = []
    if count:
        yield _cat(held)


def _cat(held: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(held) == 1:
        return held[0]
    return torch.cat([x for x, _ in held]), torch.cat([y for _, y in held])

