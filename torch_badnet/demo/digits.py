"""Font digits in lab layout, for trying the repository's MNIST BadNets (C, F) without MNIST.

    python -m torch_badnet.demo.digits digits.h5 digits_bd.h5     # clean, and with F's trigger
    python -m torch_badnet.demo.digits --trigger-png corner.png   # F's trigger, for `sweep --trigger`

Each image is a font digit about 20 pixels tall, shifted and rotated a little, on a 28x28 black field (uint8
0..255, labels 0-9 in turn). The poisoned copy carries the MNIST F BadNet's trigger (a white 4x4 square in the
bottom-right corner) and is labelled with its all-to-all target, y + 1 mod 10. Drawn, not handwritten: a
model's accuracy on them is not its MNIST accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..data.triggers import Trigger

TRIGGER = (slice(24, 28), slice(24, 28))  # F's trigger: the bottom-right 4x4 pixels, white


def font_digits(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int64), the same for the same n and seed."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    labels, images = np.arange(n) % 10, np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        font = ImageFont.load_default(size=int(rng.integers(22, 27)))
        canvas = Image.new("L", (56, 56), 0)
        ImageDraw.Draw(canvas).text((28, 28), str(label), fill=255, font=font, anchor="mm",
                                    stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
        digit = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
        digit = digit.crop(digit.getbbox())
        scale = 20 / max(digit.size)
        digit = digit.resize((max(1, round(digit.size[0] * scale)), max(1, round(digit.size[1] * scale))),
                             Image.Resampling.LANCZOS)
        out = Image.new("L", (28, 28), 0)
        dx, dy = (int(v) for v in rng.integers(-1, 2, 2))
        out.paste(digit, ((28 - digit.size[0]) // 2 + dx, (28 - digit.size[1]) // 2 + dy))
        images[i] = np.asarray(out)
    return images, labels.astype(np.int64)


def f_trigger() -> Trigger:
    """F's trigger as `--trigger` takes it: white where the mask (the 4x4 corner square) is, target all+1."""
    from ..data.triggers import Trigger

    mask = np.zeros((28, 28), np.float32)
    mask[TRIGGER] = 1
    return Trigger.from_arrays(np.full((28, 28), 255, np.float32), mask, target="all+1", name="<F's trigger>")


def with_trigger(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F's poisoned copy: the trigger stamped in (`Trigger.stamp`, as `--trigger` stamps), labels y + 1 mod 10."""
    import torch

    trigger = f_trigger()
    stamped = trigger.stamp(torch.from_numpy(images[:, None].astype(np.float32)))
    keep, poisoned_labels = trigger.poison_labels(labels, 10)
    return stamped[torch.from_numpy(keep), 0].numpy().astype(images.dtype), poisoned_labels


def write_trigger_png(path: str) -> None:
    """F's trigger as a PNG for `--trigger`: the white corner square, every other pixel transparent (the mask)."""
    from PIL import Image

    from ..data.files import atomic_path

    pixels = np.zeros((28, 28, 2), np.uint8)
    pixels[TRIGGER] = 255
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "LA").save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clean", nargs="?", help="the clean lab-layout .h5 file to write")
    p.add_argument("poisoned", nargs="?", help="also write the copy with F's trigger here")
    p.add_argument("-n", type=int, default=300, help="images (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trigger-png", metavar="PNG", help="also write F's trigger here, for `torch-badnet sweep --trigger`")
    args = p.parse_args(argv)
    from ..data.lab_sets import write_lab_h5

    if not args.clean and not args.trigger_png:
        p.error("give the clean file to write, or --trigger-png")
    for path in (args.clean, args.poisoned, args.trigger_png):
        if path and os.path.exists(path):
            print(f"error: {path}: exists; choose a new file", file=sys.stderr)
            return 2
    if args.clean:
        images, labels = font_digits(args.n, args.seed)
        write_lab_h5(args.clean, images, labels)
        if args.poisoned:
            write_lab_h5(args.poisoned, *with_trigger(images, labels))
    if args.trigger_png:
        write_trigger_png(args.trigger_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
