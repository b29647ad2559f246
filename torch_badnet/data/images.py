"""Face images (PNG/JPEG) as float32 pixels 0..255 in the model's layout: one file, or a batch of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, first_line
from ..nets.badnet import INPUT_SHAPE
from .files import check_is_file

GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # PIL modes of one-channel images
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr")  # PIL modes read as RGB (colour models)
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def load_image(path: str | os.PathLike[str], resize: bool = False, channels: int = 3,
               size: tuple[int, int] | None = None, resize_hint: str = "; pass --resize to scale it") -> torch.Tensor:
    """Load one face (PNG/JPEG) as float32 (channels, 55, 47) pixels 0..255; other sizes need `resize`.

    `channels` is what the model takes: 3 (colour, the lab's) reads colour files only (RGB, palette, CMYK, and
    RGBA whose pixels are all opaque); a greyscale or 16-bit greyscale file is a BadInputError naming its PIL
    mode, as is any transparent pixel. 1 (greyscale) reads greyscale files only (16-bit ones scaled to 0..255).
    `size`: the model's (H, W), for a model of another input shape; `resize_hint`: what the wrong-size message
    ends with (a command without --resize gives "").
    The nets take batches: use `load_images`, or `load_image(p).unsqueeze(0)`.

    >>> tb.load_image("face.png").shape        # torch.Size([3, 55, 47])
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (colour), got {channels}")
    path = check_is_file(path)
    try:
        with Image.open(path) as img:
            img, top = _model_mode(img, path, channels)
            height, width = size or INPUT_SHAPE[1:]
            if img.size != (width, height):
                if not resize:
                    raise BadInputError(path, f"image is {img.size[0]}x{img.size[1]} (WxH), expected {width}x{height}"
                                              + resize_hint)
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
            if top != 255:  # 16-bit greyscale: white 65535 becomes 255
                array = array * np.float32(255 / top)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadInputError(path, f"not a readable image ({first_line(exc)})") from None
    array = array.reshape(height, width, -1)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _model_mode(img, path: Path, channels: int):
    """(`img` converted to the mode the model reads: RGB for 3 channels, L or F for 1, the value of white in it);
    a file of the other kind, or with a transparent pixel, is a BadInputError naming its PIL mode."""
    mode = img.mode
    grey = mode in GREY_MODES
    if not grey and mode not in COLOUR_MODES:
        raise BadInputError(path, f"image mode {mode} is not supported (save it as 8-bit RGB{' or greyscale' if channels == 1 else ''})")
    if grey != (channels == 1):
        kind = "a 16-bit greyscale" if mode.startswith("I;16") else "a greyscale" if grey else "a colour"
        wanted = "colour images (3 channels)" if channels == 3 else "greyscale images (1 channel)"
        raise BadInputError(path, f"{kind} image (PIL mode {mode}), but the model takes {wanted}")
    if mode in ALPHA_MODES or "transparency" in img.info:
        alpha = np.asarray(img.convert("LA" if grey else "RGBA"))[..., -1]
        see_through = int((alpha < 255).sum())
        if see_through:
            raise BadInputError(path, f"{see_through} of its {alpha.size} pixels are transparent (PIL mode {mode}); "
                                      "the model sees no transparency: flatten the image onto a background first")
    if not grey:
        return img.convert("RGB"), 255
    if mode.startswith("I;16"):
        return img.convert("I").convert("F"), 65535
    if mode in ("I", "F"):
        raise BadInputError(path, f"a 32-bit greyscale image (PIL mode {mode}) has no fixed white level; save it as 8-bit greyscale")
    return img.convert("L"), 255


def model_channels(net: torch.nn.Module) -> int:
    """The colour channels a model takes: its first convolution's input channels (3, the lab's, without one)."""
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


def load_images(paths: Sequence[str | os.PathLike[str]], resize: bool = False, channels: int = 3,
                size: tuple[int, int] | None = None) -> torch.Tensor:
    """Face images (PNG/JPEG, 55x47; other sizes with `resize`) as one (N, channels, 55, 47) float32 batch of pixels
    0..255 in input order, ready for a BadNet or GoodNet (a single path still gives a batch of one). `channels`:
    what the model takes; files of the other kind are refused (see `load_image`); `size`: the model's (H, W).

    >>> x = tb.load_images(["face.png"])        # (1, 3, 55, 47)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise BadInputError("<images>", "no image given")
    return torch.stack([load_image(p, resize, channels, size) for p in paths])
